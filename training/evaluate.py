"""Offline quality evaluation: ranking metrics, the full-ranking harness, tuning on a validation split, and the
run that writes bench/results/quality-<dataset>-<protocol>.json (and a PNG) for every model on every target.

Metrics per user on the top-K list, averaged over the target's users, K = 10 and 20:
- recall@K = hits / |targets| (cold target items count in |targets|, so they cap the ceiling);
- ndcg@K: binary gains, DCG = sum of 1 / log2(rank + 1) over hits, ideal DCG over min(|targets|, K);
- hit@K: share of users with >= 1 hit; precision@K = hits / K;
- map@K: recommenders' current map_at_k, (sum over hits of precision@rank) / min(|targets|, K). Its older
  releases divided by |targets| instead (what it now calls `map`), which gives lower figures;
- coverage@K: distinct items in the top-K lists of all users / number of train items.
On msr-stratified these are recommenders' ndcg_at_k / precision_at_k / recall_at_k / map_at_k (binary relevance,
seen items removed, users = those in both train and test).

Every user is ranked over all train items (never sampled candidates); a target with exclude_train removes the
user's train items first. Items a model scores -inf never count as recommended.
The command line face is `shoprec evaluate`.
"""

import json
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from training.baselines import ALS, BPR, EASE, ItemKNN, Popularity, Recommender, Repurchase, grid_points
from training.pipeline import TwoTowerRecommender, fit_ranker
from training.protocols import Split, Target, main_target, make_split, targets, validation_split

KS = (10, 20)
CHUNK = 512  # users scored at once: bounds the dense score block (Taobao: 512 x 50k floats = 100 MB)
METRICS = ("recall", "ndcg", "hit", "precision", "map", "coverage")
DEFINITIONS = {
    "recall@K": "hits / |targets|, mean over users",
    "ndcg@K": "binary gains, 1/log2(rank+1) discounts, ideal DCG over min(|targets|, K)",
    "hit@K": "share of users with >= 1 hit",
    "precision@K": "hits / K",
    "map@K": "sum over hits of precision@rank / min(|targets|, K) (recommenders' map_at_k)",
    "coverage@K": "distinct items in all users' top-K / number of train items",
    "ceiling": "mean over users of the share of their target items seen in train",
}


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [n, k] best first, valid [n, k]): valid is False where the score is -inf (excluded or unknown)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return top, np.isfinite(np.take_along_axis(scores, top, axis=1))


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user recall, ndcg, hit, precision and map at k from a hit matrix [users, >= k] (best rank first) and
    each user's number of target items."""
    hits = hits[:, :k].astype(np.float64)
    n_hits = hits.sum(axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    discounts = 1.0 / np.log2(ranks + 1)
    ideal_discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1))])
    ideal = ideal_discounts[np.minimum(n_relevant, k)]
    precision_at_rank = np.cumsum(hits, axis=1) / ranks
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "recall": n_hits / n_relevant,
            "ndcg": (hits * discounts).sum(axis=1) / ideal,
            "hit": (n_hits > 0).astype(np.float64),
            "precision": n_hits / k,
            "map": (precision_at_rank * hits).sum(axis=1) / np.minimum(n_relevant, k),
        }


def _pair_matrix(pairs: pd.DataFrame, users: pd.Index, items: pd.Index) -> sp.csr_matrix:
    """Boolean users x items matrix of (user_id, item_id) pairs; pairs outside either index are dropped."""
    rows, cols = users.get_indexer(pairs["user_id"]), items.get_indexer(pairs["item_id"])
    keep = (rows >= 0) & (cols >= 0)
    data = np.ones(int(keep.sum()), dtype=bool)
    return sp.csr_matrix((data, (rows[keep], cols[keep])), shape=(len(users), len(items)), dtype=bool)


def evaluate_target(
    model: Recommender,
    split: Split,
    target: Target,
    items: np.ndarray | None = None,
    ks: tuple[int, ...] = KS,
    chunk: int = CHUNK,
) -> dict[str, float]:
    """Metrics of one fitted model on one target, ranking every target user over `items` (default split.items)."""
    items = split.items if items is None else items
    users, item_index = pd.Index(target.users), pd.Index(items)
    truth = _pair_matrix(target.pairs, users, item_index)
    n_relevant = target.pairs.groupby("user_id").size().reindex(users).to_numpy()
    excluded = _pair_matrix(split.train, users, item_index) if target.exclude_train else None

    per_user: dict[str, list[np.ndarray]] = {}
    recommended = {k: np.zeros(len(items), dtype=bool) for k in ks}
    chunks = range(0, len(users), chunk)
    for start in tqdm(chunks, desc=f"{target.name}", leave=False, disable=len(chunks) < 4):
        block = slice(start, start + chunk)
        scores = np.asarray(model.score(users[block].to_numpy(), items, target.name), dtype=np.float32)
        if excluded is not None:
            rows, cols = excluded[block].nonzero()
            scores[rows, cols] = -np.inf
        top, valid = top_k(scores, max(ks))
        hits = np.take_along_axis(truth[block].toarray(), top, axis=1) & valid
        for k in ks:
            for metric, values in ranking_metrics(hits, n_relevant[block], k).items():
                per_user.setdefault(f"{metric}@{k}", []).append(values)
            recommended[k][top[:, :k][valid[:, :k]]] = True

    result = {}
    for k in ks:
        for metric in METRICS[:-1]:
            values = per_user.get(f"{metric}@{k}")
            result[f"{metric}@{k}"] = float(np.mean(np.concatenate(values))) if values else 0.0
        result[f"coverage@{k}"] = float(recommended[k][: len(split.items)].sum() / len(split.items))
    return result


def search_grid(factory: Callable[..., Recommender], split: Split) -> dict[str, list]:
    """The factory's grid; the 'event' weighting is dropped where every event is a purchase (it equals binary)."""
    grid = dict(getattr(factory, "grid", {}))
    single_type = split.train["event_type"].nunique() <= 1
    if single_type and "weighting" in grid:
        grid["weighting"] = [value for value in grid["weighting"] if value != "event"] or grid["weighting"][:1]
    return grid


def tune(
    factory: Callable[..., Recommender],
    grid: dict[str, list],
    split: Split,
    target: str,
    validation: Split | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Fit every grid point on the validation split's train, score its `target`, pick the best recall@20 (ties:
    ndcg@20, then grid order). Returns (best params, table of every point). The caller refits on full train."""
    validation = validation if validation is not None else validation_split(split)
    goal = targets(validation).get(target)
    rows = []
    for params in tqdm(grid_points(grid), desc=f"tune {getattr(factory, 'name', factory)}", leave=False):
        model = factory(**params).fit(validation.train, validation.catalog, validation.cutoff)
        metrics = evaluate_target(model, validation, goal, ks=(20,)) if goal is not None else {}
        rows.append({**params, "recall@20": metrics.get("recall@20", 0.0), "ndcg@20": metrics.get("ndcg@20", 0.0)})
    return _best(grid, rows)


def _best(grid: dict[str, list], rows: list[dict]) -> tuple[dict, pd.DataFrame]:
    """(the grid point of the best row by recall@20, then ndcg@20, then grid order; the table of every row)."""
    best = max(range(len(rows)), key=lambda i: (rows[i]["recall@20"], rows[i]["ndcg@20"], -i))
    return grid_points(grid)[best], pd.DataFrame(rows)


_tune = tune  # run()'s `tune` flag shadows the function


class RankedTwoTower:
    """The two_tower+ranker factory, and its tuning. The one tuned choice is the ranker's candidate count: too
    many and the ranker's errors reach the top (msr-stratified's validation split, the ranker retrained three
    times: nDCG@10 0.219 at 200 candidates, 0.250 at 100, 0.254 at 50, against the two-tower's own 0.235)."""

    name = "two_tower+ranker"
    grid: ClassVar[dict[str, list]] = {"candidates": [50, 100, 200]}

    def __init__(self, **defaults):
        self.defaults = defaults  # TwoTowerRecommender arguments every model gets (e.g. preset_name="tiny")

    def __call__(self, **params) -> TwoTowerRecommender:
        return TwoTowerRecommender(name=self.name, with_ranker=True, **{**self.defaults, **params})

    def tune(self, grid: dict[str, list], split: Split, target: str, validation: Split | None = None):
        """As tune(), for the price of one fit: the count changes nothing before the ranker, so both two-towers
        are fitted once on the validation split's train and only the ranker once per grid point."""
        validation = validation if validation is not None else validation_split(split)
        goal = targets(validation).get(target)
        if goal is None:  # nothing to tune on: the grid's first point, as tune() gives
            return _best(grid, [{**params, "recall@20": 0.0, "ndcg@20": 0.0} for params in grid_points(grid)])
        model = self()
        windows = model.fit_with_windows(validation.train, validation.catalog, validation.cutoff)
        for window in windows:  # candidate features once, at the largest count; smaller counts are cut from them
            window.candidates(max(grid.get("candidates", [model.ranker_config.candidates])))
        rows = []
        for params in tqdm(grid_points(grid), desc=f"tune {self.name}", leave=False):
            config = replace(model.ranker_config, **params)
            model.ranker = fit_ranker(windows, config, model.device, model.progress)
            metrics = evaluate_target(model, validation, goal, ks=(20,))
            rows.append({**params, "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"]})
        return _best(grid, rows)


RECOMMENDERS: dict[str, Callable[..., Recommender]] = {
    "popularity": Popularity,
    "repurchase": Repurchase,
    "item_knn": ItemKNN,
    "als": ALS,
    "bpr": BPR,
    "ease": EASE,
    # The production pipeline (features from the train split through Feast, the full preset; only the ranker's
    # candidate count is tuned).
    "two_tower": lambda **params: TwoTowerRecommender(name="two_tower", **params),
    "two_tower+ranker": RankedTwoTower(),
}


def run(
    dataset: str,
    protocol: str,
    data_dir: Path | None = None,
    models: list[str] | None = None,
    out_dir: Path = Path("bench/results"),
    tune: bool = True,
) -> dict:
    """Split, tune (on a validation split from the end of train), refit on full train and evaluate every model
    on every target and on the cold-start slice; write quality-<dataset>-<protocol>.json and .png to out_dir."""
    started = time.perf_counter()
    unknown = set(models or []) - set(RECOMMENDERS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; choose from {', '.join(RECOMMENDERS)}")
    if data_dir is None and dataset != "online_retail":
        from core.settings import get_settings

        data_dir = get_settings().data_dir
    split = make_split(dataset, protocol, data_dir)
    goals = targets(split)
    main = main_target(split)
    validation = validation_split(split) if tune else None
    cold_items = split.all_items[len(split.items) :]
    cold_goals = {name: goal.restrict(cold_items) for name, goal in goals.items()}

    result = {
        "dataset": dataset,
        "protocol": protocol,
        "split": {**split.counts(), "cutoff": None if split.cutoff is None else split.cutoff.isoformat()},
        "main_target": main,
        "users": {name: len(goal.users) for name, goal in goals.items()},
        "targets": {name: {} for name in goals},
        "cold_start": {name: _ceiling(goal, split, cold_goals[name]) for name, goal in goals.items()},
        "params": {},
        "tuning": {},
        "seconds": {},
        "tune_seconds": {},
        "definitions": DEFINITIONS,
    }
    fitted: dict[str, Recommender] = {}
    for name in tqdm(models or list(RECOMMENDERS), desc=f"{dataset} {protocol}"):
        factory = RECOMMENDERS[name]
        grid = search_grid(factory, split)
        params: dict = {}
        if tune and grid:
            tick = time.perf_counter()
            tuner = getattr(factory, "tune", None) or partial(_tune, factory)
            params, table = tuner(grid, split, main, validation)
            result["tune_seconds"][name] = round(time.perf_counter() - tick, 2)
            result["tuning"][name] = table.to_dict("records")
        tick = time.perf_counter()
        if name == "two_tower+ranker" and "two_tower" in fitted:
            # The pipeline's two rows share their two-tower: fit it once, add the ranker.
            model = fitted["two_tower"].plus_ranker(split.train, split.catalog, name, **params)
        else:
            model = factory(**params).fit(split.train, split.catalog, split.cutoff)
        if name == "two_tower":
            fitted[name] = model  # only this one is reused; a baseline's matrices are freed with it
        for target_name, goal in goals.items():
            result["targets"][target_name][name] = evaluate_target(model, split, goal)
            cold = cold_goals[target_name]
            recall = None
            if len(cold.users):
                recall = evaluate_target(model, split, cold, items=split.all_items, ks=(20,))["recall@20"]
            result["cold_start"][target_name]["recall@20"][name] = recall
        result["seconds"][name] = round(time.perf_counter() - tick, 2)
        if getattr(model, "retrieval", None) is not None:  # our models: how their training went
            reports = {"two_tower": model.retrieval.report, "ranker": getattr(model.ranker, "report", None)}
            result.setdefault("training", {})[name] = {k: r.__dict__ for k, r in reports.items() if r is not None}
        result["params"][name] = params
    result["wall_seconds"] = round(time.perf_counter() - started, 1)

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"quality-{dataset}-{protocol}"
    if models:  # a subset refreshes its own rows of an earlier run on the same split and keeps the others
        result = _merged(stem.with_suffix(".json"), result, models)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=_plain) + "\n")
    plot(result, stem.with_suffix(".png"))
    return result


def _merged(path: Path, result: dict, refreshed: list[str]) -> dict:
    """result's models over those of the run saved at path, when that run had the same split (else result alone)."""
    if not path.exists():
        return result
    earlier = json.loads(path.read_text())
    if earlier.get("split") != json.loads(json.dumps(result["split"], default=_plain)):
        return result
    for section in ("params", "tuning", "seconds", "tune_seconds", "training"):
        result[section] = {**earlier.get(section, {}), **result.get(section, {})}
    for name in result["targets"]:
        result["targets"][name] = {**earlier["targets"].get(name, {}), **result["targets"][name]}
        recalls = result["cold_start"][name]["recall@20"]
        result["cold_start"][name]["recall@20"] = {**earlier["cold_start"][name]["recall@20"], **recalls}
    result["refreshed"] = refreshed  # the other rows come from the earlier run
    return result


def _ceiling(goal: Target, split: Split, cold: Target) -> dict:
    """How much of a target no model ranking train items can reach: the cold-start slice's size and the recall
    ceiling (mean over users of the share of their target items that are train items)."""
    in_train = goal.pairs["item_id"].isin(split.items)
    ceiling = in_train.groupby(goal.pairs["user_id"]).mean().mean() if len(goal.pairs) else 0.0
    return {
        "users": len(cold.users),
        "cold_pairs": int((~in_train).sum()),
        "cold_pair_share": float((~in_train).mean()) if len(goal.pairs) else 0.0,
        "ceiling": float(ceiling),
        "recall@20": {},
    }


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def plot(result: dict, path: Path) -> None:
    """Bar plot of recall@20 and ndcg@20 per model, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["targets"])
    figure, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for axis, target_name in zip(axes[0], names):
        table = pd.DataFrame(result["targets"][target_name]).T
        positions = np.arange(len(table))
        axis.bar(positions - 0.2, table["recall@20"], 0.4, label="recall@20")
        axis.bar(positions + 0.2, table["ndcg@20"], 0.4, label="ndcg@20")
        axis.set_xticks(positions, table.index, rotation=30, ha="right")
        axis.set_title(f"{target_name} ({result['users'][target_name]} users)")
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"{result['dataset']}, {result['protocol']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown_table(result: dict) -> str:
    """Models x metrics, one table per target, plus the cold-start slice."""
    lines = [f"## {result['dataset']}, {result['protocol']}"]
    for target_name, by_model in result["targets"].items():
        if not by_model:
            continue
        columns = list(next(iter(by_model.values())))
        lines += ["", f"### {target_name} ({result['users'][target_name]} users)", ""]
        lines += ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for model, metrics in by_model.items():
            lines.append(f"| {model} | " + " | ".join(f"{metrics[column]:.4f}" for column in columns) + " |")
    lines += ["", "### cold start (test items unseen in train)", "", "| target | users | ceiling | recall@20 |"]
    lines.append("|---|---|---|---|")
    for target_name, cold in result["cold_start"].items():
        recalls = ", ".join(f"{m} {r:.4f}" for m, r in cold["recall@20"].items() if r is not None) or "-"
        lines.append(f"| {target_name} | {cold['users']} | {cold['ceiling']:.4f} | {recalls} |")
    return "\n".join(lines) + "\n"
