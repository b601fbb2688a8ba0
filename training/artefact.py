"""A trained recommender as a folder that describes itself: weights, model configs, the id maps and hashing
scheme, the item-to-item weights the ranker reads, the feature services (name and version) it reads, its data
window and metrics. Serving rebuilds both models from this folder alone, given a feature store to read features
from."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from training.candidates import RANKER_FEATURES
from training.config import RankerConfig, TwoTowerConfig
from training.examples import RANKER_SERVICE, TWO_TOWER_SERVICE
from training.item_similarity import ItemSimilarity
from training.models import Ranker, TwoTower
from training.pipeline import FittedRanker, Retrieval, TwoTowerRecommender
from training.train import TrainReport

FORMAT = 2  # 2: item_similarity.npz
SERVICES = (TWO_TOWER_SERVICE, RANKER_SERVICE)
HASHING = "bucket = pandas.util.hash_array(id) % (buckets - 1) + 1 (SipHash, pandas' fixed key); 0 = none"


def service_version(store, name: str) -> str:
    """A feature service's version: a digest of its views and features with their types, so a changed definition
    is a different version and serving can refuse features a model was not trained on."""
    service = store.get_feature_service(name)
    spec = sorted((p.name, f.name, str(f.dtype)) for p in service.feature_view_projections for f in p.features)
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]


def save(recommender, directory: Path, metadata: dict) -> Path:
    """Write a fitted TwoTowerRecommender; metadata (data window, metrics, ...) joins the description."""
    directory.mkdir(parents=True, exist_ok=True)
    retrieval = recommender.retrieval
    torch.save(retrieval.model.state_dict(), directory / "two_tower.pt")
    retrieval.similarity.save(directory / "item_similarity.npz")
    description = {
        "format": FORMAT,
        "hashing": HASHING,
        "two_tower": retrieval.model.config.to_dict(),
        "trained_item_ids": [str(i) for i in retrieval.trained_ids],
        "as_of": retrieval.as_of.isoformat(),
        "now": None if retrieval.now is None else retrieval.now.isoformat(),
        "feature_services": {name: service_version(retrieval.store, name) for name in SERVICES},
        "two_tower_report": retrieval.report.__dict__,
        **metadata,
    }
    if recommender.ranker is not None:
        ranker = recommender.ranker
        torch.save(ranker.model.state_dict(), directory / "ranker.pt")
        description["ranker"] = {
            **ranker.config.to_dict(),
            "mean": ranker.mean.tolist(),
            "std": ranker.std.tolist(),
            "features": list(RANKER_FEATURES),
        }
        description["ranker_report"] = ranker.report.__dict__
    (directory / "artefact.json").write_text(json.dumps(description, indent=2, default=str) + "\n")
    return directory


def describe(directory: Path) -> dict:
    return json.loads((directory / "artefact.json").read_text())


def load(directory: Path, store, as_of=None, now=None):
    """A TwoTowerRecommender from a saved folder, reading features from `store` as of as_of and scoring for the
    moment now (both default to the saved ones when as_of is not given; now defaults to as_of when it is).
    Refuses a store whose feature services differ from the ones the model was trained on."""
    description = describe(directory)
    if description.get("format") != FORMAT:
        raise ValueError(f"artefact format {description.get('format')} is not {FORMAT}, which this code reads: "
                         "retrain it")  # fmt: skip
    for name, version in description["feature_services"].items():
        if service_version(store, name) != version:
            raise ValueError(f"feature service {name} changed since training (model {version}, store "
                             f"{service_version(store, name)}): retrain before serving this store")  # fmt: skip
    config = TwoTowerConfig(**description["two_tower"])
    model = TwoTower(config)
    model.load_state_dict(torch.load(directory / "two_tower.pt", weights_only=True))
    if as_of is None:
        as_of, now = description["as_of"], description.get("now")
    as_of, now = pd.Timestamp(as_of), None if now is None else pd.Timestamp(now)
    report = TrainReport(**description["two_tower_report"])
    recommender = TwoTowerRecommender(two_tower=config, progress=False)
    trained = np.asarray(description["trained_item_ids"], dtype=object)
    similarity = ItemSimilarity.load(directory / "item_similarity.npz")
    recommender.retrieval = Retrieval(model.eval(), store, as_of, trained, report, similarity, now)
    if "ranker" in description:
        if description["ranker"].get("features") != list(RANKER_FEATURES):
            raise ValueError("the ranker was trained on other features than this code computes: retrain it")
        fields = {k: v for k, v in description["ranker"].items() if k not in ("mean", "std", "features")}
        ranker_config = RankerConfig(**{**fields, "hidden": tuple(fields["hidden"])})
        mean, std = (np.asarray(description["ranker"][k], np.float32) for k in ("mean", "std"))
        ranker = Ranker(len(mean), ranker_config)
        ranker.load_state_dict(torch.load(directory / "ranker.pt", weights_only=True))
        recommender.ranker = FittedRanker(ranker.eval(), mean, std, ranker_config,
                                          TrainReport(**description["ranker_report"]))  # fmt: skip
        recommender.with_ranker, recommender.ranker_config = True, ranker_config
    return recommender
