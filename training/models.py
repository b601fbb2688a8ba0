"""The two models: a two-tower retrieval model (user tower, item tower, one shared space) and a multi-task ranker.

Models only map tensors to tensors; how examples are built (training/examples.py), how they are trained
(training/train.py) and how serving indexes the item vectors (serving/) live elsewhere.
"""

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from training.config import RankerConfig, TwoTowerConfig

N_EVENT_TYPES = 5  # core.contract.EVENT_TYPES; history_types holds their indices
USER_NUMBERS = 3  # log1p of views_7d, add_to_carts_7d, purchases_30d


def hash_buckets(values, buckets: int) -> np.ndarray:
    """Stable hashed buckets of string ids (pandas' SipHash with its fixed key): the same id maps to the same row
    in every process, and an id never seen in training still gets one. Bucket 0 is kept for 'nothing'."""
    values = np.asarray(values, dtype=object)
    if len(values) == 0:
        return np.zeros(0, np.int64)
    if len(values) <= _REMEMBERED_CALL:
        return _remembered_buckets(values, buckets)
    return _hashed(values, buckets)


def _hashed(values: np.ndarray, buckets: int) -> np.ndarray:
    return (pd.util.hash_array(values.astype(str).astype(object)) % np.uint64(buckets - 1)).astype(np.int64) + 1


_REMEMBERED_CALL = 512  # calls this small (a serving request's history) look ids up before hashing them
_REMEMBERED_IDS = 1 << 20  # ids remembered per bucket count at most (a catalog's worth): then it starts afresh
_remembered: dict[int, dict] = {}  # buckets -> {id: bucket}


def remember_buckets(values, buckets: int) -> None:
    """Hash ids ahead of the small calls that will ask for them: serving remembers its catalog's ids when it
    loads a champion, so no request pays pandas' hashing for an id it has not met yet (~0.3 ms for a new user's
    history of 100 items)."""
    _remembered_buckets(np.asarray(values, dtype=object), buckets)  # the buckets themselves are not needed here


def _remembered_buckets(values: np.ndarray, buckets: int) -> np.ndarray:
    """hash_buckets of a few ids through a memo: a request re-hashes the same catalog ids over and over, and
    hashing 100 ids through pandas costs ~0.1-0.4 ms, most of a user tower's time at one user."""
    known = _remembered.setdefault(buckets, {})
    keys = [key if type(key) is str else str(key) for key in values.tolist()]  # 1 and 1.0 are one dict key
    missing = [key for key in dict.fromkeys(keys) if key not in known]
    if missing:
        if len(known) + len(missing) > _REMEMBERED_IDS:
            known.clear()
        known.update(zip(missing, _hashed(np.asarray(missing, dtype=object), buckets).tolist(), strict=True))
    return np.fromiter(map(known.__getitem__, keys), np.int64, count=len(keys))


class ItemTower(nn.Module):
    """An item's vector from its hashed id, hashed category, price and text embedding."""

    def __init__(self, config: TwoTowerConfig, id_embedding: nn.Embedding):
        super().__init__()
        self.id_embedding = id_embedding  # shared with the user tower's history encoder
        self.category = nn.Embedding(config.category_buckets, config.dim, padding_idx=0)
        self.text = nn.Linear(config.text_dim, config.dim)
        self.price = nn.Linear(2, config.dim)  # log price and a missing flag
        self.mlp = nn.Sequential(nn.Linear(config.dim, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim))

    def forward(self, ids, categories, prices, texts, use_id) -> torch.Tensor:
        """use_id [B] (0 or 1): 0 for items whose id never appeared in training (their bucket was never trained,
        or belongs to another item), and for the id-dropout share during training."""
        x = self.id_embedding(ids) * use_id[:, None] + self.category(categories) + self.text(texts) + self.price(prices)
        return F.normalize(x + self.mlp(x), dim=-1)


class UserTower(nn.Module):
    """A user's vector from their latest events (attention-pooled) and activity counts."""

    def __init__(self, config: TwoTowerConfig, id_embedding: nn.Embedding):
        super().__init__()
        self.id_embedding = id_embedding
        self.event_type = nn.Embedding(N_EVENT_TYPES + 1, config.dim, padding_idx=0)
        self.position = nn.Embedding(config.history_length, config.dim)
        self.attention = nn.Linear(config.dim, 1)  # one learned query: cheap, and enough to weigh recent events
        self.mlp = nn.Sequential(nn.Linear(2 * config.dim + USER_NUMBERS + 1, 2 * config.dim), nn.GELU(),
                                 nn.Linear(2 * config.dim, config.dim))  # fmt: skip

    def forward(self, history_ids, history_types, numbers) -> torch.Tensor:
        """history_ids, history_types: [B, L], newest first, 0 = padding; numbers: [B, USER_NUMBERS]."""
        present = history_ids > 0
        positions = self.position.weight[: history_ids.shape[1]]
        h = self.id_embedding(history_ids) + self.event_type(history_types) + positions[None]  # [B, L, dim]
        weights = self.attention(h).squeeze(-1).masked_fill(~present, -1e4).softmax(-1) * present
        mean = present / present.sum(1, keepdim=True).clamp(min=1)
        # Both poolings as one batched matmul over the events: the same sums as (weights[..., None] * h).sum(1),
        # whose broadcast products and their backward were the user tower's main cost at L=100 (full-preset fit
        # on Online Retail 558 -> 501 s).
        pooled = torch.stack([weights, mean], dim=1) @ h  # [B, 2, dim]: attended, mean
        empty = (~present.any(1)).float()[:, None]  # a newcomer: the MLP learns what to do with no history
        return F.normalize(self.mlp(torch.cat([pooled.flatten(1), numbers, empty], dim=-1)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, config: TwoTowerConfig):
        super().__init__()
        self.config = config
        id_embedding = nn.Embedding(config.id_buckets, config.dim, padding_idx=0)
        self.item_tower = ItemTower(config, id_embedding)
        self.user_tower = UserTower(config, id_embedding)
        # Every embedding starts at the same small scale (nanoGPT's 0.02): with torch's default N(0, 1) the event
        # type and position rows would drown the item ids in a history, and the category the id in an item.
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()


class Ranker(nn.Module):
    """A shared bottom over the candidate's features, one logit per task (interact, add_to_cart, purchase)."""

    TASKS = ("interact", "add_to_cart", "purchase")

    def __init__(self, n_features: int, config: RankerConfig):
        super().__init__()
        layers, width = [], n_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.bottom = nn.Sequential(*layers)
        self.heads = nn.Linear(width, len(self.TASKS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads(self.bottom(features))
