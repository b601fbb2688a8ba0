"""The demo's retrain, timed per step (bench/results/retrain.json): the tiny preset on the bundled Online Retail.

The lake is the demo's: `shoprec replay online_retail --every week`, `shoprec ingest`, `shoprec features build`,
made through the same library calls. It is built once (under --lake, kept there for the next run) and every
measured run retrains on a fresh copy of it, so the steps see exactly what the retrain_models DAG sees and a
before/after pair measures the same lake. Each step of training/retrain.py is timed on its own, wall clock.

`python -m bench.retrain [--preset tiny] [--lake DIR] [--label NAME] [--against REV]`: the figures go under
the label (default "current") beside the others in the results file. --against REV first measures that commit
the same way on the same lake (its code from a git worktree, run by this interpreter, this file copied in), so
one run gives before and after under the same conditions.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.layout import Layout
from core.settings import Settings

RESULTS = Path(__file__).parent / "results" / "retrain.json"
STEPS = ("prepare", "train_retrieval", "embed_catalog", "train_ranker", "evaluate", "gate", "publish")


def build_lake(home: Path) -> dict:
    """The demo's lake under home: weekly replay, the gate on every batch, the feature tables."""
    from features.build import build_pending
    from ingest import datasets, replay
    from validation.catalog import apply_feeds
    from validation.gate import pending_batches, run_gate

    settings, layout = Settings(home=home), Layout(home)
    landed = replay.land(datasets.load("online_retail"), layout, every="week")
    apply_feeds(layout)
    verdicts = [run_gate(path, layout, settings).status for path in pending_batches(layout)]
    build_pending(layout, settings)
    return {"batches": len(landed), "accepted": verdicts.count("accepted")}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (a second training process counts once it ends): on a
    shared machine wall time says what a user waits, CPU time what the work costs, less swayed by other jobs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_retrain(lake: Path, preset: str) -> dict:
    from training import retrain

    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as work:
        home = Path(work) / "home"
        shutil.copytree(lake, home)
        settings, run_id = Settings(home=home), "bench"
        calls = {"prepare": lambda: retrain.prepare(settings, run_id, preset)}
        calls.update({step: (lambda s=step: getattr(retrain, s)(settings, run_id)) for step in STEPS[1:]})
        seconds, cpu_seconds, started = {}, {}, time.perf_counter()
        for step, call in calls.items():
            tick, cpu = time.perf_counter(), _cpu_seconds()
            result = call()
            seconds[step] = round(time.perf_counter() - tick, 1)
            cpu_seconds[step] = round(_cpu_seconds() - cpu, 1)
            print(f"{step}: {seconds[step]} s, {cpu_seconds[step]} s of CPU", flush=True)
        total = round(time.perf_counter() - started, 1)
        split = json.loads((retrain.run_folder(settings, run_id) / "split.json").read_text())
        evaluation = json.loads((retrain.run_folder(settings, run_id) / "evaluation.json").read_text())
    main = evaluation["main_target"]
    quality = {name: {k: round(v, 4) for k, v in metrics[main].items() if k in ("recall@20", "ndcg@20")}
               for name, metrics in evaluation["metrics"].items()}  # fmt: skip
    return {"code": str(Path(retrain.__file__).resolve().parents[1]),  # which tree's training/ ran
            "preset": preset, "seconds": seconds, "total_seconds": total, "cpu_seconds": cpu_seconds, "counts": split["counts"],
            "main_target": main, "quality": quality, "published": result.get("published")}  # fmt: skip


def measure_commit(rev: str, lake: Path, preset: str, out: Path) -> None:
    """This benchmark on another commit's code: a worktree of it, this file copied in, its results under rev."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-retrain-rev-") as work:
        tree = Path(work) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev], check=True)
        try:
            shutil.copy(Path(__file__), tree / "bench" / "retrain.py")
            env = {**os.environ, "PYTHONPATH": str(tree)}
            command = [sys.executable, "-m", "bench.retrain", "--lake", str(lake), "--preset", preset,
                       "--label", rev, "--out", str(out.resolve())]  # fmt: skip
            subprocess.run(command, check=True, cwd=tree, env=env)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--lake", type=Path, default=Path(tempfile.gettempdir()) / "shoprec-bench-lake")
    parser.add_argument("--label", default="current", help="the name these figures are kept under")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--against", help="a commit to measure first, under its own name")
    args = parser.parse_args()
    if not (args.lake / ".built").exists():
        print(f"building the demo's lake under {args.lake} ...", flush=True)
        shutil.rmtree(args.lake, ignore_errors=True)
        tick = time.perf_counter()
        lake = build_lake(args.lake)
        print(f"lake: {lake}, {time.perf_counter() - tick:.0f} s", flush=True)
        (args.lake / ".built").write_text(json.dumps(lake))
    if args.against:
        measure_commit(args.against, args.lake, args.preset, args.out)
    row = time_retrain(args.lake, args.preset)
    row["machine"] = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(json.dumps(row, indent=2), flush=True)
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**earlier, args.label: row}, indent=2) + "\n")


if __name__ == "__main__":
    main()
