"""The models' inputs as plain arrays (no feature store needed), and their tensors on a device.

training/examples.py fills them from Feast; the training loops and the benchmarks read them, so a GPU machine
without the feature store can train on examples built elsewhere.
"""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ItemTable:
    """The item tower's inputs for a set of items, row i describing ids[i]."""

    ids: np.ndarray  # item ids (str)
    id_buckets: np.ndarray  # int64
    categories: np.ndarray  # int64 hashed category (0: none)
    prices: np.ndarray  # float32 [N, 2]: log1p(price), price missing
    texts: np.ndarray  # float32 [N, 384]
    trained: np.ndarray  # bool: the id occurred in training, so its id vector means something

    def tensors(self, rows=None, device="cpu") -> tuple:
        rows = slice(None) if rows is None else rows
        return tuple(torch.as_tensor(a[rows], device=device) for a in
                     (self.id_buckets, self.categories, self.prices, self.texts, self.trained.astype(np.float32)))  # fmt: skip


@dataclass
class UserInputs:
    """The user tower's inputs, one row per (user, time) asked for."""

    history_ids: np.ndarray  # int64 [N, L] hashed item ids, newest first, 0 = padding
    history_types: np.ndarray  # int64 [N, L] event type code + 1, 0 = padding
    numbers: np.ndarray  # float32 [N, 3]

    def tensors(self, rows=None, device="cpu") -> tuple:
        rows = slice(None) if rows is None else rows
        return tuple(
            torch.as_tensor(a[rows], device=device) for a in (self.history_ids, self.history_types, self.numbers)
        )
