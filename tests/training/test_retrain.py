"""Retraining end to end on a small shop (tiny preset): the first challenger is published as champion, a broken
challenger is never published, rollback restores the previous champion, and the artefact rebuilds the models."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from training import artefact, publish, retrain


def test_retrain_publishes_a_champion_and_a_broken_challenger_never_gets_in(tasteful_lake, shoprec_home):
    settings = shoprec_home
    first = retrain.retrain(settings, "run-1", preset_name="tiny")
    metrics = first["evaluation"]["metrics"]
    main = first["evaluation"]["main_target"]
    assert metrics["challenger"][main]["recall@20"] > metrics["popularity"][main]["recall@20"]
    assert first["decision"]["promote"] and first["published"] == publish.champion(settings)
    stored = publish.champion_path(settings)
    description = json.loads((stored / "artefact.json").read_text())
    assert set(description["feature_services"]) == {"two_tower_v1", "ranker_v1"}
    assert description["data_window"] and description["cutoff"] and "ranker" in description
    assert pd.Timestamp(description["now"]) == pd.Timestamp(description["cutoff"]), "scored for the cutoff"
    assert (stored / "item_vectors.npy").exists() and not (stored / "items.faiss").exists(), "the index is serving's"

    # A broken challenger: run 1's artefact with its item vectors scrambled (id and category rows shuffled, text
    # ignored), evaluated on the same split.
    shutil.copytree(retrain.run_folder(settings, "run-1"), retrain.run_folder(settings, "run-2"))
    folder = retrain.run_folder(settings, "run-2") / "artefact"
    weights = torch.load(folder / "two_tower.pt", weights_only=True)
    shuffle = torch.Generator().manual_seed(0)
    for name in ("item_tower.id_embedding.weight", "item_tower.category.weight"):
        weights[name] = weights[name][torch.randperm(len(weights[name]), generator=shuffle)]
    weights["item_tower.text.weight"] = torch.zeros_like(weights["item_tower.text.weight"])
    torch.save(weights, folder / "two_tower.pt")
    broken = retrain.evaluate(settings, "run-2")["metrics"]
    assert broken["champion"][main] == metrics["challenger"][main], "the champion is re-scored on the same split"
    decision = retrain.gate(settings, "run-2")
    assert not decision["promote"], decision
    assert retrain.publish(settings, "run-2")["published"] is None
    assert publish.champion(settings) == first["published"]
    import bentoml

    assert len(bentoml.models.list(_model_store=publish._store(settings))) == 1, "nothing else entered the store"

    # The published artefact alone rebuilds the models (given a store), and refuses changed feature services.
    store = retrain._store(retrain.run_folder(settings, "run-1"))
    loaded = artefact.load(stored, store)
    assert loaded.retrieval.now == pd.Timestamp(description["cutoff"]) < loaded.retrieval.as_of
    users = np.array(["u0-1", "u1-1"], dtype=object)
    items = np.array(["i1", "i30", "i99", "never-seen"], dtype=object)
    scores = loaded.score(users, items, "all")
    assert scores.shape == (2, 4) and np.isfinite(scores).all()
    changed = retrain.run_folder(settings, "run-2") / "artefact"
    description["feature_services"]["two_tower_v1"] = "0" * 12
    (changed / "artefact.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="changed since training"):
        artefact.load(changed, store)


def test_rollback_makes_the_previous_champion_current(tasteful_lake, shoprec_home, tmp_path):
    settings = shoprec_home
    with pytest.raises(ValueError, match="no champion"):
        publish.rollback(settings)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "artefact.json").write_text("{}")
    first = publish.publish(tmp_path / "a", settings, {"stage": "champion"}, {"metrics": {}})
    with pytest.raises(ValueError, match="no previous champion"):
        publish.rollback(settings)
    second = publish.publish(tmp_path / "a", settings, {"stage": "champion"}, {"metrics": {}})
    assert publish.champion(settings) == second != first
    assert publish.rollback(settings) == first and publish.champion(settings) == first


def test_a_retried_publish_of_one_run_adds_no_second_version(shoprec_home, tmp_path):
    """The publish task retried after its first try put the version in the store (a worker lost right then)."""
    import bentoml

    settings = shoprec_home
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "artefact.json").write_text("{}")
    labels = {"stage": "champion", "run_id": "scheduled__2011-12-10T00-00-00"}
    first = publish.publish(tmp_path / "a", settings, labels, {"metrics": {}})
    assert publish.publish(tmp_path / "a", settings, labels, {"metrics": {}}) == first
    assert [str(m.tag) for m in bentoml.models.list(_model_store=publish._store(settings))] == [first]
    assert publish.champion(settings) == first
    with pytest.raises(ValueError, match="no previous champion"):  # one entry in the champion's history
        publish.rollback(settings)
    other = publish.publish(tmp_path / "a", settings, {**labels, "run_id": "manual__later"}, {"metrics": {}})
    assert other != first and publish.champion(settings) == other


def test_gate_tolerance_is_relative_and_popularity_is_a_floor():
    champion = {"recall@20": 0.20, "ndcg@20": 0.10}
    floor = {"recall@20": 0.05, "ndcg@20": 0.03}
    assert publish.decide({"recall@20": 0.197, "ndcg@20": 0.099}, champion, floor).promote  # within 2%
    assert not publish.decide({"recall@20": 0.19, "ndcg@20": 0.12}, champion, floor).promote  # 5% behind
    assert not publish.decide({"recall@20": 0.04, "ndcg@20": 0.02}, None, floor).promote  # below popularity
    assert publish.decide({"recall@20": 0.06, "ndcg@20": 0.04}, None, floor).promote
