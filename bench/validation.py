"""Gate throughput and peak memory on 1 million synthetic events with 1% bad rows (bench/results/validation.json).

Each measured run is a fresh child process, so its peak RSS is the gate's own (imports included, reported apart).
Runs are repeated and the median is reported. The synthetic generator's time for 10 million events is measured too.
"""

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

EVENTS = 1_000_000
BAD_SHARE = 0.01
REPEATS = 3
TARGET_EVENTS_PER_S = 200_000
DAY = "2024-01-01"  # one day of a busy shop: a daily batch, judged at the end of its day
AS_OF = "2024-01-02T00:00:00Z"
RESULTS = Path(__file__).parent / "results" / "validation.json"


def _gate_once(path: str, home: str, queue: mp.Queue) -> None:
    from core.layout import Layout
    from core.settings import Settings
    from validation.gate import run_gate

    settings = Settings(home=Path(home))
    rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = run_gate(Path(path), Layout(settings.home), settings, as_of=AS_OF)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": elapsed, "peak_rss_mb": peak / 1024, "imports_rss_mb": rss_after_imports / 1024,
               "verdict": result.to_dict()})  # fmt: skip


def _measure(path: Path, home: Path) -> dict:
    queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=_gate_once, args=(str(path), str(home), queue))
    child.start()
    out = queue.get()
    child.join()
    return out


def main() -> None:
    from core.layout import Layout, write_parquet
    from ingest import synthetic
    from ingest.replay import to_bytes

    report = {"events": EVENTS, "bad_share": BAD_SHARE, "repeats": REPEATS, "cpus": os.cpu_count(),
              "machine": platform.machine(), "target_events_per_s": TARGET_EVENTS_PER_S, "formats": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        source = synthetic.generate(EVENTS, bad_share=BAD_SHARE, days=1, start=DAY)
        report["generate_1m_s"] = round(time.perf_counter() - start, 2)
        jobs = [(fmt, run) for fmt in ("parquet", "csv") for run in range(REPEATS)]
        for fmt in ("parquet", "csv"):
            path = Path(tmp) / f"synthetic-1m.{fmt}"
            path.write_bytes(to_bytes(source.events, fmt))
        runs: dict[str, list[dict]] = {"parquet": [], "csv": []}
        for fmt, run in tqdm(jobs, desc="gate runs", unit="run"):
            # Alternate formats run by run, so a slow spell on a shared machine hits both alike.
            home = Path(tmp) / f"home-{fmt}-{run}"
            write_parquet(source.catalog, Layout(home).catalog)  # the shop's catalog: its items are known
            runs[fmt].append(_measure(Path(tmp) / f"synthetic-1m.{fmt}", home))
        for fmt, measured in runs.items():
            seconds = statistics.median(r["seconds"] for r in measured)
            verdict = measured[0]["verdict"]
            report["formats"][fmt] = {
                "median_s": round(seconds, 3),
                "events_per_s": round(EVENTS / seconds),
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in measured)),
                "rss_after_imports_mb": round(statistics.median(r["imports_rss_mb"] for r in measured)),
                "runs_s": [round(r["seconds"], 3) for r in measured],
                "accepted": verdict["accepted"],
                "quarantined": verdict["quarantined"],
                "status": verdict["status"],
                "failed_rules": verdict["failed_rules"],
                "meets_target": EVENTS / seconds >= TARGET_EVENTS_PER_S,
            }
        del source
        start = time.perf_counter()
        synthetic.generate(10_000_000, bad_share=BAD_SHARE)
        report["generate_10m_s"] = round(time.perf_counter() - start, 1)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for fmt, r in report["formats"].items():
        print(f"gate on 1M events ({fmt}): {r['events_per_s']:,} events/s (median of {REPEATS}: {r['median_s']} s), "
              f"peak RSS {r['peak_rss_mb']} MB; target {TARGET_EVENTS_PER_S:,}/s met: {r['meets_target']}")  # fmt: skip
    print(f"synthetic generator: 1M events {report['generate_1m_s']} s, 10M events {report['generate_10m_s']} s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
