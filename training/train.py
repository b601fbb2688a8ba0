"""The training loops, plain PyTorch read top to bottom: the two-tower on InfoNCE, the ranker on multi-task BCE.

device="auto" picks CUDA (with bf16 autocast) when a GPU is present and the CPU otherwise; the same code runs on
both. Seeds are fixed, so a run on the same data and device gives the same model.
"""

import contextlib
import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from training.config import RankerConfig, TwoTowerConfig
from training.inputs import ItemTable, UserInputs
from training.losses import info_nce, multitask_bce
from training.models import Ranker, TwoTower


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the CPU, moved only when it is not there: Module.cpu() walks every parameter, which is most
    of a serving request's ranker call."""
    return on(model, torch.device("cpu"))


def on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on device in eval mode, touched only where it is not already (both walk every module)."""
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device != device:
        model = model.to(device)
    return model.eval() if model.training else model


def _autocast(device: torch.device):
    # bf16 on the GPU: the tensor cores' fast path with fp32's range, so no loss scaling is needed.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class RetrievalExamples:
    """Positive (user state, item) pairs: example e pairs user row user_rows[e] with item row item_rows[e]."""

    users: UserInputs
    user_rows: np.ndarray  # int64 [E]
    items: ItemTable  # the catalog the model learns to retrieve from
    item_rows: np.ndarray  # int64 [E]
    order: np.ndarray  # float64 [E]: example time (or a random key), the latest share validates


@dataclass
class TrainReport:
    device: str
    examples: int
    epochs: int
    seconds: float
    examples_per_s: float  # examples over the median epoch's optimisation time
    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # optimisation only, without validation
    valid_recall_at_20: list[float] = field(default_factory=list)
    best_valid_recall_at_20: float = 0.0
    calibration_error: dict[str, float] = field(default_factory=dict)  # ranker: expected calibration error per
    #                                                                     head on its training rows (0 = calibrated)

    def end_epoch(self, loss_sum: float, examples: int, started: float) -> None:
        self.epoch_seconds.append(time.perf_counter() - started)
        self.epochs += 1
        self.losses.append(loss_sum / max(examples, 1))

    def end(self, started: float) -> None:
        self.seconds = time.perf_counter() - started
        self.examples_per_s = self.examples / max(float(np.median(self.epoch_seconds or [0.0])), 1e-9)


def _adamw(model: torch.nn.Module, config: TwoTowerConfig | RankerConfig) -> torch.optim.AdamW:
    # foreach: one multi-tensor kernel per update term instead of one per parameter. torch picks it only on CUDA;
    # on the CPU the per-parameter loop cost the tiny two-tower a quarter of its training time (its steps are
    # small, so dispatch dominates), and the update is the same to the bit (a test compares them).
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def held_out(order: np.ndarray, share: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) example positions: the latest `share` by order validates (at most 5,000)."""
    by_order = np.argsort(order, kind="stable")
    n_valid = min(int(len(by_order) * share), 5000) if len(by_order) >= 200 else 0
    return by_order[: len(by_order) - n_valid], by_order[len(by_order) - n_valid :]


def train_two_tower(data: RetrievalExamples, config: TwoTowerConfig, device="auto", valid_share=0.05, progress=True):
    """Train on all but the latest valid_share of the examples; stop early on their recall@20 (the share of held-out
    examples whose item ranks in the top 20 of the whole catalog). Returns (model at its best epoch, report)."""
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    model = TwoTower(config).to(device)
    optimizer = _adamw(model, config)

    train_idx, valid_idx = held_out(data.order, valid_share)
    n_valid = len(valid_idx)
    n_items = len(data.items.ids)
    # Sampling probability of each catalog row as a negative: in-batch negatives come with the positives'
    # popularity, extra ones uniformly; logQ subtracts the log of the mixture's expected count per batch.
    negatives_pool = np.flatnonzero(data.items.trained) if data.items.trained.any() else np.arange(n_items)
    # A catalog no larger than extra_negatives is used whole in every batch: the full softmax, no sampling at all.
    whole_pool = (
        torch.as_tensor(negatives_pool, device=device) if config.extra_negatives >= len(negatives_pool) else None
    )
    n_extra = len(negatives_pool) if whole_pool is not None else config.extra_negatives
    popularity = np.bincount(data.item_rows[train_idx], minlength=n_items) / max(len(train_idx), 1)
    expected = config.batch_size * popularity + n_extra / len(negatives_pool)
    log_q = torch.as_tensor(np.log(np.maximum(expected, 1e-12)), dtype=torch.float32, device=device)
    item_tensors = data.items.tensors(device=device)
    user_tensors = data.users.tensors(device=device)
    user_rows = torch.as_tensor(data.user_rows, device=device)
    item_rows = torch.as_tensor(data.item_rows, device=device)

    report = TrainReport(device=str(device), examples=len(train_idx), epochs=0, seconds=0.0, examples_per_s=0.0)
    best_state, stale_epochs, started = copy.deepcopy(model.state_dict()), 0, time.perf_counter()
    bar = tqdm(range(config.epochs), desc="two-tower", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        # An epoch is at most max_epoch_examples random examples, so a big shop's epoch stays minutes long.
        order = train_idx[generator.permutation(len(train_idx))[: config.max_epoch_examples]]
        total, tick = 0.0, time.perf_counter()
        for start in range(0, len(order), config.batch_size):
            batch = torch.as_tensor(order[start : start + config.batch_size], device=device)
            if len(batch) < 2:
                continue
            rows = item_rows[batch]
            with _autocast(device):
                history_ids, history_types, numbers = _user_batch(user_tensors, user_rows[batch], rows, item_tensors,
                                                                  config)  # fmt: skip
                if config.history_dropout:
                    hidden = torch.rand(history_ids.shape, device=device) < config.history_dropout
                    history_ids, history_types = (
                        history_ids.masked_fill(hidden, 0),
                        history_types.masked_fill(hidden, 0),
                    )
                users = model.user_tower(history_ids, history_types, numbers)
                items = _item_vectors(model, item_tensors, rows, config.id_dropout)
                extra_rows = extra = extra_log_q = None
                if config.extra_negatives:
                    extra_rows = (
                        whole_pool
                        if whole_pool is not None
                        else torch.as_tensor(generator.choice(negatives_pool, config.extra_negatives), device=device)
                    )
                    extra = _item_vectors(model, item_tensors, extra_rows, config.id_dropout)
                    extra_log_q = log_q[extra_rows] if config.log_q else None
                loss = info_nce(users, items, rows, config.temperature, log_q[rows] if config.log_q else None,
                                extra, extra_rows, extra_log_q)  # fmt: skip
            total += _step(optimizer, loss) * len(batch)
        report.end_epoch(total, len(order), tick)
        recall = _valid_recall(model, data, valid_idx, device, config) if n_valid else float("nan")
        report.valid_recall_at_20.append(recall)
        bar.set_postfix(loss=f"{report.losses[-1]:.3f}", valid_recall_20=f"{recall:.3f}")
        if n_valid == 0 or recall > report.best_valid_recall_at_20:
            report.best_valid_recall_at_20 = recall if n_valid else 0.0
            best_state, stale_epochs = copy.deepcopy(model.state_dict()), 0
        else:
            stale_epochs += 1
            if stale_epochs >= config.patience:
                break
    report.end(started)
    model.load_state_dict(best_state)
    return model.eval(), report


def train_two_tower_with_threads(threads: int, data: RetrievalExamples, config: TwoTowerConfig, device="auto"):
    """train_two_tower on `threads` CPU threads, without a progress bar: how another process trains it while the
    caller works on (TwoTowerRecommender.fit_with_windows)."""
    torch.set_num_threads(threads)
    model, report = train_two_tower(data, config, device=device, progress=False)
    return model.cpu(), report


def _user_batch(user_tensors, rows, targets, item_tensors, config: TwoTowerConfig) -> tuple:
    history_ids, history_types, numbers = (t[rows] for t in user_tensors)
    if config.history == "all_but_target":  # the user's other items: the target itself must not be an input
        hit = history_ids == item_tensors[0][targets][:, None]
        history_ids, history_types = history_ids.masked_fill(hit, 0), history_types.masked_fill(hit, 0)
    return history_ids, history_types, numbers


def _item_vectors(model: TwoTower, item_tensors, rows, id_dropout: float = 0.0) -> torch.Tensor:
    ids, categories, prices, texts, trained = (t[rows] for t in item_tensors)
    use_id = trained
    if id_dropout and model.training:
        use_id = use_id * (torch.rand(len(rows), device=rows.device) >= id_dropout).float()
    return model.item_tower(ids, categories, prices, texts, use_id)


@torch.no_grad()
def item_vectors(model: TwoTower, items: ItemTable, device="auto", batch_size=8192) -> np.ndarray:
    """Every item's vector [N, dim] (float32), for the index and for scoring."""
    device = resolve_device(device)
    model = model.to(device).eval()
    tensors = items.tensors(device=device)
    out = [_item_vectors(model, tensors, torch.arange(s, min(s + batch_size, len(items.ids)), device=device)).float()
           for s in range(0, len(items.ids), batch_size)]  # fmt: skip
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, model.config.dim), np.float32)


@torch.inference_mode()
def user_vectors(model: TwoTower, users: UserInputs, device="auto", batch_size=8192) -> np.ndarray:
    device = resolve_device(device)
    model = on(model, device)
    tensors = users.tensors(device=device)
    out = [model.user_tower(*(t[s : s + batch_size] for t in tensors)).float()
           for s in range(0, len(users.numbers), batch_size)]  # fmt: skip
    if len(out) == 1:  # a serving request's one user: no copy through cat
        return out[0].cpu().numpy()
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, model.config.dim), np.float32)


@torch.no_grad()
def _valid_recall(model: TwoTower, data: RetrievalExamples, valid_idx, device, config) -> float:
    model.eval()
    items = torch.as_tensor(item_vectors(model, data.items, device), device=device)
    user_tensors, item_tensors = data.users.tensors(device=device), data.items.tensors(device=device)
    rows = torch.as_tensor(data.user_rows[valid_idx], device=device)
    targets = torch.as_tensor(data.item_rows[valid_idx], device=device)
    inputs = _user_batch(user_tensors, rows, targets, item_tensors, config)
    scores = model.user_tower(*inputs).float() @ items.T
    if config.history == "all_but_target":  # as evaluation does: the user's other (known) items are not candidates
        buckets, history = item_tensors[0], inputs[0]
        for start in range(0, len(history), 256):
            seen = (history[start : start + 256, :, None] == buckets[None, None, :]).any(1)
            scores[start : start + 256] = scores[start : start + 256].masked_fill(seen, float("-inf"))
    target_scores = scores.gather(1, targets[:, None])
    rank = (scores > target_scores).sum(1)
    return float((rank < 20).float().mean())


# ---- the ranker ----


@dataclass
class RankerExamples:
    features: np.ndarray  # float32 [N, F], standardised
    labels: np.ndarray  # float32 [N, T]
    known: np.ndarray  # float32 [N, T]: 1 where the task's label exists in this dataset


def train_ranker(data: RankerExamples, config: RankerConfig, device="auto", progress=True):
    """Multi-task BCE on candidate rows; returns (model, report). Unweighted rows keep each head's output a
    calibrated probability of its event among retrieved candidates; the report says how close (expected
    calibration error per head, on the training rows: an 11k-parameter MLP on 10^5 rows hardly overfits)."""
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    model = Ranker(data.features.shape[1], config).to(device)
    # Each head starts at its base rate: candidates are rarely taken (about 1%), and walking a logit from 0 to -4.6
    # one Adam step at a time would use most of training and leave the probabilities too high.
    with torch.no_grad():
        rates = (data.labels * data.known).sum(0) / np.maximum(data.known.sum(0), 1)
        rates = np.clip(rates, 1e-4, 1 - 1e-4)
        model.heads.bias.copy_(torch.as_tensor(np.log(rates / (1 - rates))))
    optimizer = _adamw(model, config)
    weights = torch.as_tensor([config.task_weights[t] for t in Ranker.TASKS], dtype=torch.float32, device=device)
    features, labels, known = (torch.as_tensor(a, device=device) for a in (data.features, data.labels, data.known))
    report = TrainReport(device=str(device), examples=len(features), epochs=0, seconds=0.0, examples_per_s=0.0)
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="ranker", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.as_tensor(generator.permutation(len(features)), device=device)
        total, tick = 0.0, time.perf_counter()
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            with _autocast(device):
                loss = multitask_bce(model(features[batch]), labels[batch], known[batch], weights)
            total += _step(optimizer, loss) * len(batch)
        report.end_epoch(total, len(order), tick)
        bar.set_postfix(loss=f"{report.losses[-1]:.4f}")
    report.end(started)
    model.eval()
    with torch.no_grad():
        probabilities = torch.cat([torch.sigmoid(model(features[s : s + 65536]).float())
                                   for s in range(0, len(features), 65536)]).cpu().numpy()  # fmt: skip
    for column, task in enumerate(Ranker.TASKS):
        rows = data.known[:, column] > 0  # a head is calibrated on the rows it learns from
        if rows.any():
            report.calibration_error[task] = expected_calibration_error(
                probabilities[rows, column], data.labels[rows, column]
            )
    return model, report


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |predicted - observed rate| over equal-width probability bins, weighted by each bin's share of rows."""
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    predicted = np.bincount(which, probabilities, minlength=bins)
    observed = np.bincount(which, labels, minlength=bins)
    return float(np.abs(predicted - observed).sum() / max(len(probabilities), 1))
