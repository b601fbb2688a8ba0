"""Training throughput on a GPU, from examples built on a machine with the feature store.

A GPU machine may have torch and no Feast, so the work is split in two:

    python -m bench.gpu_training export DIR   # here: the full preset's examples of each dataset, through Feast
    python -m bench.gpu_training train DIR    # there: train both models on them, write DIR/training-gpu.json
                                              # and each dataset's item and user vectors, DIR/<dataset>-vectors.npz

The two-tower's examples are exactly those `fit` trains on (temporal train split, `full` preset). The ranker's
candidates come from a `tiny` two-tower, which changes which items are candidates but not how many rows there
are or their width, and throughput depends only on those. Besides the preset's own batch size, the two-tower and
the ranker are also timed at larger batches: a GPU is fed best by big batches, while the preset's small batches
are chosen for model quality on a CPU.
"""

import gzip
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.inputs import UserInputs
from training.train import item_vectors, resolve_device, train_ranker, train_two_tower, user_vectors

DATASETS = ("online_retail", "taobao", "movielens")
BATCH_SIZES = {"two_tower": (256, 1024, 4096), "ranker": (2048, 16384, 65536)}
QUERIES = 1000  # user vectors saved beside the item vectors, as index queries
THROUGHPUT_EPOCHS = 3  # timed epochs per batch size in the sweep (the median one counts)


def export(out_dir: Path) -> None:
    import tempfile

    from core.settings import get_settings
    from training.pipeline import TwoTowerRecommender, by_time, ranker_examples, retrieval_examples
    from training.protocols import make_split

    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = get_settings().data_dir
    for dataset in DATASETS:
        if dataset != "online_retail" and not data_dir.is_dir():
            print(f"skipping {dataset}: {data_dir} is absent")
            continue
        split = make_split(dataset, "temporal", None if dataset == "online_retail" else data_dir)
        with tempfile.TemporaryDirectory(prefix=f"export-{dataset}-") as work:
            full = TwoTowerRecommender(preset_name="full", work_dir=Path(work) / "full")
            store, as_of = full.feature_store(split.train, split.catalog, split.cutoff)
            retrieval, config, _ = retrieval_examples(store, by_time(split.train), as_of, full.config)
            # The ranker's rows: a tiny two-tower before the label windows supplies the candidates.
            tiny = TwoTowerRecommender(preset_name="tiny", work_dir=Path(work) / "tiny", progress=False)
            tiny.settle_config(cutoff_given=True)
            ranker, _, _ = ranker_examples(tiny.label_windows(split.train, split.catalog), full.ranker_config)
        retrieval.items.texts = retrieval.items.texts.astype(np.float16)  # half the bytes to carry
        path = out_dir / f"{dataset}.pkl.gz"
        with gzip.open(path, "wb", compresslevel=6) as f:
            pickle.dump({"two_tower": (retrieval, config), "ranker": (ranker, full.ranker_config)}, f)
        print(f"{dataset}: {len(retrieval.item_rows)} two-tower examples, {len(ranker.features)} ranker rows, "
              f"{path.stat().st_size / 2**20:.1f} MiB", flush=True)  # fmt: skip


def _report(report) -> dict:
    return {"examples": report.examples, "epochs": report.epochs, "seconds": round(report.seconds, 2),
            "examples_per_s": round(report.examples_per_s),
            "best_valid_recall_at_20": round(report.best_valid_recall_at_20, 4)}  # fmt: skip


def train(in_dir: Path) -> None:
    device = resolve_device("auto")
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "datasets": {}}  # fmt: skip
    for path in sorted(in_dir.glob("*.pkl.gz")):
        dataset = path.name.removesuffix(".pkl.gz")
        with gzip.open(path, "rb") as f:
            examples = pickle.load(f)
        retrieval, config = examples["two_tower"]
        retrieval.items.texts = retrieval.items.texts.astype(np.float32)
        ranker, ranker_config = examples["ranker"]
        row = {}
        # The full preset as fit() runs it: early stopping, validation included in the wall time.
        model, report = train_two_tower(retrieval, config, device=device, progress=False)
        row["two_tower_full_preset"] = _report(report)
        # The trained catalog's vectors and the 1,000 latest user states: real vectors for the index benchmark.
        by_recency = retrieval.user_rows[np.argsort(-retrieval.order)]
        latest = by_recency[np.sort(np.unique(by_recency, return_index=True)[1])][:QUERIES]
        queries = UserInputs(*(a[latest] for a in (retrieval.users.history_ids, retrieval.users.history_types,
                                                    retrieval.users.numbers)))  # fmt: skip
        np.savez(in_dir / f"{dataset}-vectors.npz", items=item_vectors(model, retrieval.items, device),
                 queries=user_vectors(model, queries, device))  # fmt: skip
        _, report = train_ranker(ranker, ranker_config, device=device, progress=False)
        row["ranker_full_preset"] = _report(report)
        for name, sizes in BATCH_SIZES.items():
            for batch_size in sizes:
                if name == "two_tower":
                    sweep = replace(config, batch_size=batch_size, epochs=THROUGHPUT_EPOCHS, patience=THROUGHPUT_EPOCHS)
                    _, report = train_two_tower(retrieval, sweep, device=device, progress=False)
                else:
                    sweep = replace(ranker_config, batch_size=batch_size, epochs=THROUGHPUT_EPOCHS)
                    _, report = train_ranker(ranker, sweep, device=device, progress=False)
                row[f"{name}_batch_{batch_size}_examples_per_s"] = round(report.examples_per_s)
        result["datasets"][dataset] = row
        print(dataset, json.dumps(row), flush=True)
    (in_dir / "training-gpu.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    verb, folder = sys.argv[1], Path(sys.argv[2])
    started = time.perf_counter()
    {"export": export, "train": train}[verb](folder)
    print(f"{verb} took {time.perf_counter() - started:.0f} s")
