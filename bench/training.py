"""Training speed on this machine and the ANN index's recall (bench/results/training.json).

For each dataset (temporal protocol's train split; Taobao and MovieLens only where ../shared/data is present) the
`full` preset of the production pipeline is fitted end to end: feature build and Feast registration from the train
events, the two-tower, and the ranker (with its own label-window two-tower). Throughput is examples per second of
optimisation (the median epoch, validation excluded); fit time is the whole `fit`, wall clock.

The index: every Taobao item vector (the largest catalog here) searched with user vectors as queries, HNSW
(serving/index.py's settings) against the exact flat scan: recall@100 and milliseconds per query (median of 3
repeats of the same query set). A synthetic 200k-item catalog (random unit vectors, the hardest case for a graph
index) shows where HNSW starts to pay.
"""

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.settings import get_settings
from serving.index import build_index, recall_at
from training.pipeline import TwoTowerRecommender
from training.protocols import make_split

RESULTS = Path(__file__).parent / "results" / "training.json"
DATASETS = ("online_retail", "taobao", "movielens")
QUERIES = 1000
REPEATS = 3


def fit_dataset(dataset: str, data_dir: Path | None) -> tuple[dict, TwoTowerRecommender, object]:
    split = make_split(dataset, "temporal", data_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{dataset}-") as work:
        recommender = TwoTowerRecommender(preset_name="full", with_ranker=True, work_dir=Path(work))
        recommender.fit(split.train, split.catalog, split.cutoff)
        fit_seconds = time.perf_counter() - started
        two_tower, ranker = recommender.retrieval.report, recommender.ranker.report
        row = {
            "train_events": len(split.train), "train_items": len(split.items),
            "fit_seconds": round(fit_seconds, 1),
            "two_tower": {"examples": two_tower.examples, "examples_per_s": round(two_tower.examples_per_s),
                          "epochs": two_tower.epochs, "seconds": round(two_tower.seconds, 1),
                          "best_valid_recall_at_20": round(two_tower.best_valid_recall_at_20, 4)},
            "ranker": {"examples": ranker.examples, "examples_per_s": round(ranker.examples_per_s),
                       "epochs": ranker.epochs, "seconds": round(ranker.seconds, 1)},
        }  # fmt: skip
        vectors = queries = None
        if dataset == "taobao":
            items = np.union1d(split.items, split.catalog["item_id"].astype(str).to_numpy()).astype(object)
            vectors = recommender.retrieval.items(items)
            users = np.sort(split.train["user_id"].unique())[:QUERIES]
            queries = recommender.retrieval.users(users)
    return row, vectors, queries


def index_figures(vectors: np.ndarray, queries: np.ndarray, label: str) -> dict:
    exact = build_index(vectors, "exact")
    started = time.perf_counter()
    hnsw = build_index(vectors, "hnsw")
    build_s = time.perf_counter() - started
    timings = {"exact": [], "hnsw": []}
    for _ in range(REPEATS):
        for name, index in (("exact", exact), ("hnsw", hnsw)):
            tick = time.perf_counter()
            index.search(np.ascontiguousarray(queries, dtype=np.float32), 100)
            timings[name].append((time.perf_counter() - tick) / len(queries) * 1000)
    return {"catalog": label, "items": len(vectors), "queries": len(queries), "hnsw_build_s": round(build_s, 2),
            "recall_at_100": round(recall_at(hnsw, exact, queries, 100), 4),
            "ms_per_query": {k: round(float(np.median(v)), 4) for k, v in timings.items()}}  # fmt: skip


def save(report: dict) -> None:
    """Writes the figures measured so far, keeping those of earlier runs that this run did not measure again: a
    full run takes about an hour on two cores, so a run stopped half-way still leaves what it finished."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    measured = {row["catalog"] for row in report["index"]}
    kept_index = [row for row in earlier.get("index", []) if row["catalog"] not in measured]
    merged = {**earlier, **report, "datasets": {**earlier.get("datasets", {}), **report["datasets"]},
              "index": kept_index + report["index"]}  # fmt: skip
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")


def main() -> None:
    """`python -m bench.training [DATASET ...]` (the named datasets, all by default, then the synthetic index) or
    `python -m bench.training index [VECTORS.npz ...]` (the index figures only, on the synthetic catalog and on
    vectors saved by bench/gpu_training.py)."""
    import sys

    only_index = sys.argv[1:2] == ["index"]
    saved_vectors = [Path(path) for path in sys.argv[2:]] if only_index else []  # from bench/gpu_training.py
    datasets = () if only_index else tuple(sys.argv[1:]) or DATASETS
    if unknown := set(datasets) - set(DATASETS):
        raise SystemExit(f"unknown dataset(s) {sorted(unknown)}; choose from {DATASETS}")
    data_dir = get_settings().data_dir
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"torch {torch.__version__}, {torch.get_num_threads()} threads",
              "device": "cuda" if torch.cuda.is_available() else "cpu", "datasets": {}, "index": [], "skipped": []}  # fmt: skip
    for dataset in datasets:
        if dataset != "online_retail" and not data_dir.is_dir():
            report["skipped"].append(f"{dataset}: {data_dir} is absent")
            continue
        print(f"fitting the full preset on {dataset} ...", flush=True)
        row, vectors, queries = fit_dataset(dataset, None if dataset == "online_retail" else data_dir)
        report["datasets"][dataset] = row
        print(json.dumps(row), flush=True)
        if vectors is not None:
            report["index"].append(index_figures(vectors, queries, "taobao items, two-tower vectors"))
        save(report)
    for path in saved_vectors:
        saved = np.load(path)
        label = f"{path.name.removesuffix('-vectors.npz')} items, two-tower vectors (trained on a GPU)"
        report["index"].append(index_figures(saved["items"], saved["queries"], label))
    if not saved_vectors:  # the synthetic catalog takes minutes to index: only when no saved vectors are asked for
        rng = np.random.default_rng(0)
        synthetic = rng.standard_normal((200_000, 64)).astype(np.float32)
        synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
        report["index"].append(index_figures(synthetic, synthetic[rng.choice(len(synthetic), QUERIES)],
                                             "200k random unit vectors"))  # fmt: skip
    save(report)
    print(json.dumps(report["index"], indent=2))


if __name__ == "__main__":
    main()
