"""Baselines on tiny hand-made frames (repurchase order, co-occurrence in EASE and item-kNN, ALS/BPR shapes, -inf
for unknown items, EASE's user-side form equal to the closed form) and the harness end to end."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.training.conftest import T0, events_from
from training import evaluate, protocols
from training.baselines import ALS, BPR, EASE, Interactions, ItemKNN, Popularity, Repurchase


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Events from (user, item, hours after T0[, event_type]) tuples."""
    return events_from(rows, pd.Timedelta(hours=1))


def co_occurring() -> pd.DataFrame:
    """x and y are bought together by six users; z and w by four others; u0 has bought x only."""
    rows = [(f"p{u}", item, u) for u in range(6) for item in ("x", "y")]
    rows += [(f"q{u}", item, u) for u in range(4) for item in ("z", "w")]
    return frame([*rows, ("u0", "x", 10)])


def test_repurchase_ranks_own_items_by_frequency_then_recency_then_popularity():
    train = frame(
        [("u1", "b", 1), ("u1", "b", 2), ("u1", "b", 3), ("u1", "c", 4), ("u1", "a", 5),  # a is more recent than c
         ("u2", "d", 1), ("u3", "d", 2), ("u4", "d", 3), ("u2", "e", 4), ("u3", "e", 5)]
    )  # fmt: skip
    model = Repurchase().fit(train, pd.DataFrame(), None)
    items = np.array(["a", "b", "c", "d", "e"])
    scores = model.score(np.array(["u1", "u9"]), items, "all")
    assert items[np.argsort(-scores[0], kind="stable")].tolist() == ["b", "a", "c", "d", "e"]
    # Popularity: d (3 events) first; b's 3 events tie with d but the tie-break is the all-time count too.
    assert items[np.argsort(-scores[1], kind="stable")][:1].tolist() in (["b"], ["d"])
    assert scores.dtype == np.float32


def test_event_weighting_lets_a_purchase_outrank_repeated_views():
    train = frame([("u1", "a", 1, "view"), ("u1", "a", 2, "view"), ("u1", "b", 3, "purchase")])
    by_count = Repurchase("count").fit(train, pd.DataFrame(), None).score(np.array(["u1"]), np.array(["a", "b"]), "buy")
    by_event = Repurchase("event").fit(train, pd.DataFrame(), None).score(np.array(["u1"]), np.array(["a", "b"]), "buy")
    assert by_count[0, 0] > by_count[0, 1] and by_event[0, 1] > by_event[0, 0]
    matrix = Interactions.build(train, "event").matrix.toarray()
    assert matrix.tolist() == [[1.0, 4.0]]  # the pair's strongest event type


def test_popularity_window_counts_recent_events_only():
    train = frame([("u1", "old", 0), ("u2", "old", 1), ("u3", "old", 2), ("u1", "new", 100), ("u2", "new", 101)])
    as_of = T0 + pd.Timedelta(hours=102)
    items = np.array(["old", "new", "never"])
    all_time = Popularity().fit(train, pd.DataFrame(), as_of).score(np.array(["u1"]), items, "new")
    assert all_time[0, 0] > all_time[0, 1]
    recent = Popularity(window_days=1).fit(train, pd.DataFrame(), as_of).score(np.array(["u1"]), items, "new")
    assert recent[0, 1] > recent[0, 0] and recent[0, 2] == -np.inf


@pytest.mark.parametrize("model", [ItemKNN(neighbours=10), EASE(lam=1.0)], ids=["item_knn", "ease"])
def test_co_occurring_item_outranks_an_unrelated_one(model):
    model.fit(co_occurring(), pd.DataFrame(), None)
    scores = model.score(np.array(["u0"]), np.array(["y", "z", "w"]), "new")[0]
    assert scores[0] > scores[1] and scores[0] > scores[2]


def test_ease_user_side_form_equals_the_closed_form():
    train = co_occurring()  # 11 users, 4 items: the item-side form
    wide = pd.concat([train, frame([("p0", f"t{i}", 20) for i in range(12)])])  # 16 items > 11 users: user side
    model = EASE(lam=2.0).fit(wide, pd.DataFrame(), None)
    assert model.mode == "users"
    matrix = Interactions.build(wide).matrix.toarray().astype(np.float64)
    inverse = np.linalg.inv(matrix.T @ matrix + 2.0 * np.eye(matrix.shape[1]))
    weights = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    users, items = np.array(["u0", "p0", "q1"]), model.data.items.to_numpy()
    expected = matrix[model.data.user_rows(users)] @ weights
    assert model.score(users, items, "all") == pytest.approx(expected, abs=1e-5)
    assert EASE(lam=2.0).fit(train, pd.DataFrame(), None).mode == "items"


def test_ease_beyond_max_items_keeps_the_most_popular_and_scores_the_rest_minus_inf():
    train = pd.concat([co_occurring(), frame([("q0", "rare", 30)])])
    model = EASE(lam=1.0, max_items=3).fit(train, pd.DataFrame(), None)  # 12 users and 5 items, both > 3
    scores = model.score(np.array(["u0"]), np.array(["x", "y", "z", "w", "rare"]), "all")[0]
    assert np.isinf(scores).sum() == 2 and scores[4] == -np.inf


@pytest.mark.parametrize(
    "model", [ALS(factors=4, iterations=3, regularization=0.1), BPR(factors=4, iterations=5)], ids=["als", "bpr"]
)
def test_factor_models_return_finite_scores_of_the_right_shape(model):
    model.fit(co_occurring(), pd.DataFrame(), None)
    scores = model.score(np.array(["u0", "p1", "stranger"]), np.array(["x", "y", "z", "w"]), "new")
    assert scores.shape == (3, 4) and scores.dtype == np.float32 and np.isfinite(scores).all()


@pytest.mark.parametrize("name", [n for n in evaluate.RECOMMENDERS if not n.startswith("two_tower")])
def test_unknown_item_ids_score_minus_inf(name):
    """Id-only baselines cannot score an id they never saw (the two-tower can: tests/training/test_models.py)."""
    factory = evaluate.RECOMMENDERS[name]
    model = factory(factors=4, iterations=3) if name in ("als", "bpr") else factory()
    model.fit(co_occurring(), pd.DataFrame(), None)
    scores = model.score(np.array(["u0", "p2"]), np.array(["x", "unseen", "y"]), "all")
    assert scores.shape == (2, 3)
    assert (scores[:, 1] == -np.inf).all() and np.isfinite(scores[:, [0, 2]]).all()


def shop(days: int = 20, seed: int = 0) -> pd.DataFrame:
    """Two groups of users, each buying from its own shelf of 40 items, once a day."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in range(days):
        for user in range(40):
            shelf = user % 2
            item = f"i{shelf}-{rng.integers(0, 40)}"
            rows.append((f"u{user}", item, day * 24 + int(rng.integers(0, 24))))
    return frame(rows).sort_values("event_timestamp", kind="stable")


def test_run_tunes_evaluates_and_writes_json_png_and_table(monkeypatch, tmp_path):
    monkeypatch.setattr(protocols, "load_interactions", lambda dataset, data_dir: (shop(), pd.DataFrame()))
    result = evaluate.run("toy", "temporal", models=["popularity", "repurchase", "ease"], out_dir=tmp_path)
    written = json.loads((tmp_path / "quality-toy-temporal.json").read_text())
    assert (tmp_path / "quality-toy-temporal.png").stat().st_size > 0
    assert written["dataset"] == "toy" and written["main_target"] == "new"
    assert set(written["targets"]) == {"new", "all"} and set(written["targets"]["new"]) == {
        "popularity", "repurchase", "ease"}  # fmt: skip
    metrics = written["targets"]["new"]["ease"]
    assert {f"{m}@{k}" for m in evaluate.METRICS for k in (10, 20)} == set(metrics)
    # EASE learns the two shelves; popularity cannot tell them apart.
    assert metrics["recall@20"] > written["targets"]["new"]["popularity"]["recall@20"]
    assert written["params"]["ease"]["lam"] in EASE.grid["lam"]
    assert written["split"]["warm_users"] == 40 and "cold_start" in written
    table = evaluate.markdown_table(result)
    assert "| ease |" in table and "### all" in table
    with pytest.raises(ValueError, match="MovieLens"):
        evaluate.run("toy", "msr-stratified", out_dir=tmp_path)
    # A later run of a subset refreshes its rows of the same split and keeps the others.
    evaluate.run("toy", "temporal", models=["item_knn"], out_dir=tmp_path, tune=False)
    merged = json.loads((tmp_path / "quality-toy-temporal.json").read_text())
    assert set(merged["targets"]["new"]) == {"popularity", "repurchase", "ease", "item_knn"}
    assert merged["targets"]["new"]["ease"] == metrics and merged["refreshed"] == ["item_knn"]
