"""`shoprec`: replay datasets, run the gate, generate synthetic shops, and see the ingest ledger."""

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.layout import Layout, read_json
from core.settings import ONE_BLAS_THREAD, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _layout() -> Layout:
    return Layout(get_settings().home)


@app.command()
def replay(
    dataset: Annotated[str, typer.Argument(help="online_retail, taobao or movielens")],
    every: Annotated[str, typer.Option(help="batch length: day, week or month")] = "day",
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset (default SHOPREC_DATA_DIR)")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="a shorter replay: only the events from this date (ISO 8601, UTC) on, with the catalog of "
                     "the items they sold"),
    ] = None,
) -> None:
    """Cut a dataset into time-ordered batches in the landing zone, as if the shop were sending them."""
    from ingest import datasets
    from ingest import replay as replaying

    settings = get_settings()
    if since is not None:
        _check_time(since, "--since")
    source = datasets.load(dataset, data_dir or (None if dataset == "online_retail" else settings.data_dir))
    if since is not None:
        source = replaying.since(source, since)
    landed = replaying.land(source, _layout(), every=every)
    excluded = source.excluded["reason"].value_counts().to_dict() if len(source.excluded) else {}
    typer.echo(
        f"{source.name}: {source.raw_rows:,} source rows -> {len(source.events):,} events in {len(landed)} "
        f"batches under {_layout().landing}; excluded by the adapter: {excluded or 'none'}"
    )


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="a batch file (CSV or parquet) in the canonical contract")],
    as_of: Annotated[str | None, typer.Option(help="logical time of the batch (ISO 8601); default: now")] = None,
) -> None:
    """Check one batch against the gate and print its verdict as JSON; writes nothing (a dry run: `shoprec ingest
    PATH` takes a file in). Exit 0 if it would be accepted, 1 if it would fail, 2 on usage errors."""
    from validation.gate import judge

    _check_file(path)
    if as_of is not None:
        _check_time(as_of)
    result = judge(path, _layout(), get_settings(), as_of=as_of).result
    typer.echo(json.dumps(result.to_dict(), indent=2))
    raise typer.Exit(0 if result.status == "accepted" else 1)


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="batch files to drop into the landing zone first (default: none)")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="logical time of the dropped files (ISO 8601); default: now")
    ] = None,
) -> None:
    """Take files into the shop: drop PATHS (if any) into the landing zone, apply catalog feeds, then run the gate on
    every new batch there, writing the lake, quarantine and ledger (what ingest_events does). Exit 1 if a batch
    failed."""
    from validation.catalog import apply_feeds
    from validation.gate import pending_batches, run_gate

    settings, layout = get_settings(), _layout()
    for path in paths or []:
        _check_file(path)
    if as_of is not None:
        _check_time(as_of)
    for path in paths or []:
        typer.echo(_drop(path, layout, as_of))
    for feed in apply_feeds(layout):
        typer.echo(f"catalog feed {feed.feed}: {feed.accepted:,} accepted, {feed.quarantined:,} quarantined")
    failed = [r for p in pending_batches(layout) if (r := run_gate(p, layout, settings)).status == "failed"]
    for r in failed:
        typer.echo(f"FAILED {r.reason}", err=True)
    status()
    raise typer.Exit(1 if failed else 0)


def _drop(path: Path, layout: Layout, as_of: str | None) -> str:
    """Copy a batch file into the landing zone as received; the same bytes again are recognised, not re-landed."""
    from core.layout import batch_digest, batch_id_of, manifest_of, write_atomically, write_json

    landed = {batch_digest(p): p for p in layout.landed_batches()}
    if (digest := batch_digest(path)) in landed:
        return f"{path}: already landed as {landed[digest].name} (batch {batch_id_of(landed[digest])})"
    target = layout.landing / path.name
    if target.exists():
        typer.echo(f"{path}: the landing zone already holds another {path.name} (it is immutable): rename the file",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    if as_of is not None:
        write_json(manifest_of(target), {"as_of": as_of})
    write_atomically(target, path.read_bytes())
    return f"{path}: landed as {target} (batch {batch_id_of(target)})"


@app.command()
def status() -> None:
    """The ingest ledger: every judged batch with its counts."""
    records = [read_json(p) for p in sorted(_layout().gate.glob("*.json"))]
    width = max([len("total"), *(len(r["batch_id"]) for r in records)])
    typer.echo(f"{'batch':<{width}} {'status':<9} {'received':>9} {'accepted':>9} {'quarant.':>9}  rules")
    for r in records:
        rules = ", ".join(f"{k} {v:,}" for k, v in {**r["failed_rules"], **r.get("flagged", {})}.items())
        typer.echo(f"{r['batch_id']:<{width}} {r['status']:<9} {r['received']:>9,} {r['accepted']:>9,} "
                   f"{r['quarantined']:>9,}  {rules}")  # fmt: skip
    totals = {k: sum(r[k] for r in records) for k in ("received", "accepted", "quarantined")}
    typer.echo(f"{'total':<{width}} {'':<9} {totals['received']:>9,} {totals['accepted']:>9,} "
               f"{totals['quarantined']:>9,}")  # fmt: skip


@app.command()
def generate(
    events: Annotated[int, typer.Argument(help="number of events")],
    out: Annotated[Path, typer.Option(help="batch file to write (.csv or .parquet)")],
    bad_share: Annotated[float, typer.Option(help="share of deliberately broken rows")] = 0.0,
    users: int = 100_000,
    items: int = 20_000,
    seed: int = 0,
) -> None:
    """Write a synthetic batch: Zipf popularity, sessions, a view -> cart -> purchase funnel."""
    from core.layout import write_atomically
    from ingest import synthetic
    from ingest.replay import to_bytes

    source = synthetic.generate(events, n_users=users, n_items=items, bad_share=bad_share, seed=seed)
    write_atomically(out, to_bytes(source.events, out.suffix.lstrip(".")))
    typer.echo(f"wrote {len(source.events):,} events to {out}")


features_app = typer.Typer(no_args_is_help=True, help="Feature tables, the Feast store, and online reads.")
app.add_typer(features_app, name="features")


@features_app.command("build")
def features_build(
    full: Annotated[
        bool, typer.Option("--all", help="rebuild every day of the lake, not only the pending ones")
    ] = False,
) -> None:
    """Compute the feature tables from the event lake: the days a late event may still have changed, or --all."""
    from features.build import build, build_pending

    settings, layout = get_settings(), _layout()
    report = build(layout) if full else build_pending(layout, settings)
    typer.echo(json.dumps(report.to_dict(), indent=2))


@features_app.command("materialize")
def features_materialize() -> None:
    """`feast apply`, then incremental materialisation up to the lake's logical time."""
    from core.layout import lake_as_of
    from features.store import apply, materialize, open_store

    settings, layout = get_settings(), _layout()
    end = lake_as_of(layout)
    if end is None:
        typer.echo("the event lake is empty: run `shoprec ingest` first", err=True)
        raise typer.Exit(1)
    store = open_store(settings)
    apply(store, settings)
    typer.echo(json.dumps(materialize(store, layout, end), indent=2))


@features_app.command("read")
def features_read(
    user_id: Annotated[str, typer.Argument(help="a user id")],
    item_ids: Annotated[list[str], typer.Argument(help="item ids")],
    service: Annotated[str, typer.Option(help="feature service")] = "ranker_v1",
    as_of: Annotated[
        str | None, typer.Option(help="judge freshness at this time; default: the lake's logical time")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="print every element of list features")] = False,
) -> None:
    """Read one user's and some items' online features through the serving read path, as JSON (list features
    summarised as their length and first elements; --full for all of them)."""
    from core.layout import lake_as_of
    from features.online import OnlineFeatures
    from features.store import open_store

    settings, layout = get_settings(), _layout()
    if as_of is not None:
        _check_time(as_of)
    reader = OnlineFeatures(open_store(settings), service, layout)
    found = reader.read(user_id, item_ids, as_of=as_of or lake_as_of(layout))
    shown = _plain if full else _summary
    rows = {"user_id": user_id, "user_status": found.user_status,
            "user": {k: shown(v[0]) for k, v in found.user.items()},
            "items": [{"item_id": item, **{v: str(s[i]) for v, s in found.item_status.items()},
                       **{k: shown(v[i]) for k, v in found.items.items() if full or "text_embedding" not in k}}
                      for i, item in enumerate(item_ids)]}  # fmt: skip
    typer.echo(json.dumps(rows, indent=2))


@features_app.command("catalog")
def features_catalog(
    out: Annotated[Path, typer.Option(help="markdown file to write")] = Path("docs/feature_catalog.md"),
) -> None:
    """Write the feature catalog (views, features, descriptions, owners, tags) as markdown."""
    from features.catalog_page import catalog_markdown

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(catalog_markdown())
    typer.echo(f"wrote {out}")


@app.command()
def train(
    preset: Annotated[str, typer.Option(help="model size: tiny or full")] = "full",
    run_id: Annotated[str | None, typer.Option(help="name of the run folder (default: a timestamp)")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda")] = "auto",
) -> None:
    """Retrain on the lake, evaluate against the champion and popularity, publish when not worse (what
    retrain_models does, in one process)."""
    import pandas as pd

    from training.retrain import retrain

    if preset not in ("tiny", "full"):
        typer.echo(f"--preset must be tiny or full, not {preset!r}", err=True)
        raise typer.Exit(2)
    run_id = run_id or pd.Timestamp.now(tz="UTC").strftime("manual__%Y%m%dT%H%M%S")
    try:
        result = retrain(get_settings(), run_id, preset, device)
    except ValueError as error:
        typer.echo(f"cannot retrain: {error}", err=True)
        raise typer.Exit(1)
    main = result["evaluation"]["main_target"]
    for name, metrics in result["evaluation"]["metrics"].items():
        typer.echo(f"{name:>11}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[main].items() if k.endswith("@20")))
    typer.echo("\n".join(result["decision"]["reasons"]))
    typer.echo(f"published {result['published']}" if result["published"] else "not published; champion stays "
               f"{result['champion']}")  # fmt: skip


@app.command()
def models() -> None:
    """The latest retraining run's metrics and gate decision, and the champion in the model store."""
    from training.publish import champion

    settings = get_settings()
    runs = sorted(Layout(settings.home).training.glob("*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    if runs:
        evaluation, folder = read_json(runs[-1]), runs[-1].parent
        main = evaluation["main_target"]
        typer.echo(f"run {folder.name}, target '{main}' on the frozen split (test = the latest 10% of events):")
        for name, metrics in evaluation["metrics"].items():
            typer.echo(f"  {name:>11}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[main].items()
                                                     if k.split("@")[0] in ("recall", "ndcg", "hit")))  # fmt: skip
        if (folder / "decision.json").exists():
            decision = read_json(folder / "decision.json")
            typer.echo(
                ("promoted: " if decision["promote"] else "kept the champion: ") + "; ".join(decision["reasons"])
            )
    else:
        typer.echo("no retraining run yet")
    typer.echo(f"champion: {champion(settings) or 'none'}")


@app.command()
def rollback() -> None:
    """Make the previous champion current again (the demoted model stays in the model store)."""
    from training.publish import rollback as roll_back

    try:
        typer.echo(f"champion is now {roll_back(get_settings())}")
    except ValueError as error:
        typer.echo(f"cannot roll back: {error}", err=True)
        raise typer.Exit(1)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="port (default SHOPREC_SERVING_PORT, 3000)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 for every interface)")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(help="worker processes (default SHOPREC_SERVING_WORKERS)")] = None,
    threads: Annotated[
        int | None, typer.Option(help="request threads per worker (default SHOPREC_SERVING_THREADS)")
    ] = None,
    clock: Annotated[
        str | None, typer.Option(help="freshness clock: wall (a live shop) or shop (a replayed one)")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="require this key (prefer SHOPREC_API_KEY: an option shows in the process list)"),
    ] = None,
) -> None:
    """Start the recommendation service (`bentoml serve serving.service:Recommender`) on this SHOPREC_HOME."""
    import os
    import shutil

    from core.settings import PROJECT_ROOT

    if clock not in (None, "wall", "shop"):
        typer.echo(f"--clock must be wall or shop, not {clock!r}", err=True)
        raise typer.Exit(2)
    settings = get_settings()
    overrides = {"SHOPREC_SERVING_WORKERS": workers, "SHOPREC_SERVING_THREADS": threads,
                 "SHOPREC_SERVING_CLOCK": clock, "SHOPREC_API_KEY": api_key}  # fmt: skip
    env = {**ONE_BLAS_THREAD, **os.environ, "SHOPREC_HOME": str(settings.home),
           **{name: str(value) for name, value in overrides.items() if value is not None}}  # fmt: skip
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    command = [bentoml, "serve", "serving.service:Recommender", "--host", host,
               "--port", str(port or settings.serving_port)]  # fmt: skip
    os.chdir(PROJECT_ROOT)  # the service is imported from the project, as `bentoml serve` is run from there
    os.execvpe(command[0], command, env)


@app.command("feature-server")
def feature_server(
    port: Annotated[int, typer.Option(help="port")] = 6566,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 for every interface)")] = "127.0.0.1",
    clock: Annotated[
        str | None,
        typer.Option(
            help="freshness clock: wall (a live shop) or shop (a replayed one); default SHOPREC_SERVING_CLOCK"
        ),
    ] = None,
) -> None:
    """Start the feature server other teams query (Feast's, POST /get-online-features) on this SHOPREC_HOME: values
    older than their view's TTL answer OUTSIDE_MAX_AGE and null; with SHOPREC_API_KEY set every path but /health
    needs it (X-API-Key or Authorization: Bearer)."""
    from features.server import serve as serve_features

    if clock not in (None, "wall", "shop"):
        typer.echo(f"--clock must be wall or shop, not {clock!r}", err=True)
        raise typer.Exit(2)
    settings = get_settings()
    guarded = "required (X-API-Key)" if settings.api_key else "not set: open (development)"
    typer.echo(f"feature server on http://{host}:{port}, clock {clock or settings.serving_clock}, API key {guarded}",
               err=True)  # fmt: skip
    serve_features(settings, host=host, port=port, clock=clock)


@app.command()
def evaluate(
    dataset: Annotated[str, typer.Option(help="online_retail, taobao or movielens")],
    protocol: Annotated[str, typer.Option(help="temporal, or msr-stratified (movielens only)")] = "temporal",
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset (default SHOPREC_DATA_DIR)")] = None,
    models: Annotated[str | None, typer.Option(help="comma-separated model names (default: all)")] = None,
    out_dir: Annotated[Path, typer.Option(help="where the JSON and PNG go")] = Path("bench/results"),
    tune: Annotated[bool, typer.Option(help="tune each model on a validation split from the end of train")] = True,
) -> None:
    """Benchmark the models and the baselines on a dataset's protocol: a markdown table, JSON and a plot."""
    from training.evaluate import markdown_table, run

    try:
        result = run(dataset, protocol, data_dir, models.split(",") if models else None, out_dir, tune)
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"cannot evaluate: {error}", err=True)
        raise typer.Exit(2)
    typer.echo(markdown_table(result))


def _plain(value):
    """A numpy value as JSON: NaN (a blanked stale or missing value) becomes null."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.7g}")  # float32 precision, without float32 noise
    return value


SUMMARY_ELEMENTS = 5  # of a list feature, shown by `features read` without --full


def _summary(value):
    """A value as JSON, a list as its length and first few elements: one user_history row is 1,500 values."""
    value = _plain(value)
    if isinstance(value, list) and len(value) > SUMMARY_ELEMENTS:
        return {"length": len(value), "first": value[:SUMMARY_ELEMENTS]}
    return value


def _check_file(path: Path) -> None:
    if not path.is_file():
        typer.echo(f"{path}: no such file", err=True)
        raise typer.Exit(2)


def _check_time(text: str, option: str = "--as-of") -> None:
    try:
        import pandas as pd

        pd.Timestamp(text)
    except ValueError:
        typer.echo(f"{option} {text!r} is not an ISO 8601 time", err=True)
        raise typer.Exit(2)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
