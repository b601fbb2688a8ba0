"""Retraining on the shop's own lake, one function per step; each step is a task of the retrain_models DAG and
`shoprec train` runs them in a row. Steps hand over through a run folder (SHOPREC_HOME/training/<run_id>/):

  prepare          the frozen time split of the lake (train before the cutoff, test after) and the catalog
  train_retrieval  features from train alone (Feast, point in time) -> two-tower       -> artefact/
  embed_catalog    every catalog item's vector (serving builds its ANN index from them) -> artefact/
  train_ranker     the ranker on the label window at the end of train                  -> artefact/
  evaluate         challenger, champion and popularity on the same split               -> evaluation.json
  gate             promote or keep, with the reasons                                   -> decision.json
  publish          into BentoML's model store as the new champion, when promoted       -> published.json

What is evaluated is what is published: the artefact trained on events before the cutoff.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from core.layout import Layout, read_json, write_json, write_parquet
from core.settings import Settings
from features.build import lake_days, read_events
from features.store import open_store
from training import artefact
from training import publish as model_store
from training.baselines import Popularity
from training.config import preset
from training.evaluate import evaluate_target
from training.offline_store import EMBEDDING_CACHE
from training.pipeline import TwoTowerRecommender
from training.protocols import Split, main_target, targets, temporal_split

TRAINABLE_TYPES = ("view", "add_to_cart", "purchase")


def run_folder(settings: Settings, run_id: str) -> Path:
    return Layout(settings.home).training / run_id.replace(":", "-").replace("+", "_")


def prepare(settings: Settings, run_id: str, preset_name: str = "full") -> dict:
    """Cut the lake at 90% of its events by time; refuse a lake too small to learn from."""
    layout = Layout(settings.home)
    days = lake_days(layout)
    if not days:
        raise ValueError("the event lake is empty: ingest events before retraining")
    events = read_events(layout, days[-1])
    events = events[events["event_type"].isin(TRAINABLE_TYPES)].reset_index(drop=True)
    if events["user_id"].nunique() < 10 or len(events) < 100:
        raise ValueError(f"too little to learn from: {len(events)} events of {events['user_id'].nunique()} users")
    catalog = pd.read_parquet(layout.catalog) if layout.catalog.exists() else _catalog_from(events)
    split = temporal_split(events, catalog, "lake")
    folder = run_folder(settings, run_id)
    write_parquet(split.train, folder / "train.parquet")
    write_parquet(split.test, folder / "test.parquet")
    write_parquet(catalog, folder / "catalog.parquet")
    info = {"run_id": run_id, "preset": preset_name, "cutoff": split.cutoff.isoformat(), "counts": split.counts(),
            "data_window": [events["event_timestamp"].min().isoformat(), events["event_timestamp"].max().isoformat()]}  # fmt: skip
    write_json(folder / "split.json", info)
    return info


def train_retrieval(settings: Settings, run_id: str, device: str = "auto") -> dict:
    folder, split, info = _load(settings, run_id)
    # The lake's feature build already embedded the catalog's texts (keyed by text, same model): starting the run's
    # cache from it saves embedding them again (20 s of the tiny retrain on Online Retail).
    lake_cache, run_cache = Layout(settings.home).features / EMBEDDING_CACHE, folder / "work" / EMBEDDING_CACHE
    if lake_cache.exists() and not run_cache.exists():
        run_cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lake_cache, run_cache)
    recommender = _recommender(folder, info, device).fit_retrieval(split.train, split.catalog, split.cutoff)
    artefact.save(recommender, folder / "artefact", {"data_window": info["data_window"], "cutoff": info["cutoff"]})
    return {"report": recommender.retrieval.report.__dict__}


def embed_catalog(settings: Settings, run_id: str) -> dict:
    """Vectors of every catalog item (unseen ones from their text and category), saved with the artefact. The ANN
    index over them is serving's concern (serving/index.py): it builds its own from the vectors it loads."""
    folder, split, _ = _load(settings, run_id)
    recommender = artefact.load(folder / "artefact", _store(folder))
    item_ids = np.union1d(split.catalog["item_id"].astype(str).to_numpy(), split.items).astype(object)
    vectors = recommender.retrieval.items(item_ids)
    np.save(folder / "artefact" / "item_vectors.npy", vectors)
    (folder / "artefact" / "item_ids.json").write_text(json.dumps([str(i) for i in item_ids]))
    return {"items": len(item_ids)}


def train_ranker(settings: Settings, run_id: str, device: str = "auto") -> dict:
    folder, split, info = _load(settings, run_id)
    recommender = artefact.load(folder / "artefact", _store(folder))
    recommender.work_dir, recommender.device, recommender.progress = folder / "work", device, True
    recommender.ranker_config = preset(info["preset"])[1]
    recommender.fit_ranker(split.train, split.catalog)
    artefact.save(recommender, folder / "artefact", {k: v for k, v in artefact.describe(folder / "artefact").items()
                                                     if k in ("data_window", "cutoff")})  # fmt: skip
    return {"report": recommender.ranker.report.__dict__}


def evaluate(settings: Settings, run_id: str) -> dict:
    """Metrics of the challenger, the current champion (re-scored on this split) and popularity, every target."""
    folder, split, _ = _load(settings, run_id)
    store = _store(folder)
    models = {"challenger": artefact.load(folder / "artefact", store),
              "popularity": Popularity().fit(split.train, split.catalog, split.cutoff)}  # fmt: skip
    champion = model_store.champion_path(settings)
    if champion is not None:
        try:
            challenger = models["challenger"].retrieval
            models["champion"] = artefact.load(champion, store, as_of=challenger.as_of, now=challenger.now)
        except ValueError as error:  # its feature services changed: it cannot be compared, so it cannot block
            print(f"champion not comparable: {error}")
    goals = targets(split)
    result = {"main_target": main_target(split), "champion_tag": model_store.champion(settings),
              "metrics": {name: {t: evaluate_target(model, split, goal) for t, goal in goals.items()}
                          for name, model in models.items()}}  # fmt: skip
    write_json(folder / "evaluation.json", result)
    return result


def gate(settings: Settings, run_id: str) -> dict:
    folder = run_folder(settings, run_id)
    evaluation = read_json(folder / "evaluation.json")
    main, metrics = evaluation["main_target"], evaluation["metrics"]
    champion = metrics.get("champion", {}).get(main)
    decision = model_store.decide(metrics["challenger"][main], champion, metrics["popularity"][main]).to_dict()
    write_json(folder / "decision.json", decision)
    return decision


def publish(settings: Settings, run_id: str) -> dict:
    """Publish the challenger when the gate promoted it; otherwise nothing enters the store."""
    folder = run_folder(settings, run_id)
    decision = read_json(folder / "decision.json")
    if not decision["promote"]:
        return {"published": None, "champion": model_store.champion(settings), "reasons": decision["reasons"]}
    description = artefact.describe(folder / "artefact")
    evaluation = read_json(folder / "evaluation.json")
    main = evaluation["main_target"]
    labels = {"stage": "champion", "run_id": run_id.replace(":", "-")[:60]}
    metadata = {"metrics": evaluation["metrics"]["challenger"], "main_target": main,
                "data_window": description["data_window"], "cutoff": description["cutoff"],
                "feature_services": description["feature_services"], "reasons": decision["reasons"]}  # fmt: skip
    tag = model_store.publish(folder / "artefact", settings, labels, metadata)
    result = {"published": tag, "champion": tag}
    write_json(folder / "published.json", result)
    return result


def retrain(settings: Settings, run_id: str, preset_name: str = "full", device: str = "auto") -> dict:
    """Every step in a row (what `shoprec train` does)."""
    prepare(settings, run_id, preset_name)
    train_retrieval(settings, run_id, device)
    embed_catalog(settings, run_id)
    train_ranker(settings, run_id, device)
    evaluation = evaluate(settings, run_id)
    decision = gate(settings, run_id)
    return {"evaluation": evaluation, "decision": decision, **publish(settings, run_id)}


def _recommender(folder: Path, info: dict, device: str) -> TwoTowerRecommender:
    return TwoTowerRecommender(preset_name=info["preset"], with_ranker=True, work_dir=folder / "work", device=device)


def _store(folder: Path):
    return open_store(Settings(home=folder / "work" / "all", feast_env="embedded"))


def _load(settings: Settings, run_id: str) -> tuple[Path, Split, dict]:
    folder = run_folder(settings, run_id)
    info = read_json(folder / "split.json")
    split = Split("lake", "temporal", pd.read_parquet(folder / "train.parquet"),
                  pd.read_parquet(folder / "test.parquet"), pd.Timestamp(info["cutoff"]),
                  pd.read_parquet(folder / "catalog.parquet"))  # fmt: skip
    return folder, split, info


def _catalog_from(events: pd.DataFrame) -> pd.DataFrame:
    """A bare catalog (ids only) where the shop sent none: id-only items still train; text needs a catalog."""
    first = events.groupby("item_id")["event_timestamp"].min()
    return pd.DataFrame({"item_id": first.index, "title": "", "description": None, "category": None,
                         "price": np.nan, "first_seen": first.to_numpy()})  # fmt: skip
