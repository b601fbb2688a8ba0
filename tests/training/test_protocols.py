"""Evaluation protocol: loading, the temporal and msr-stratified splits, targets, and the ranking metrics on
hand-computed cases (recall, ndcg with ideal DCG over min(|T|, K), map, coverage, exclusion of train items)."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.training.conftest import T0, events_from
from training import protocols
from training.evaluate import evaluate_target, ranking_metrics
from training.protocols import Split, msr_stratified_split, targets, temporal_split, validation_split


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Events from (user, item, minutes after T0[, event_type]) tuples."""
    return events_from(rows, pd.Timedelta(minutes=1))


def test_load_interactions_keeps_usable_events_once_sorted_by_time(monkeypatch):
    events = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e2", "e3", "e4", "e5", "e6"],
            "user_id": ["u1", "u2", "u2", "", "u3", "u4", "u5"],
            "item_id": ["a", "b", "b", "c", "d", None, "f"],
            "event_type": ["purchase", "view", "view", "purchase", "impression", "purchase", "add_to_cart"],
            "event_timestamp": [T0 + pd.Timedelta(hours=3), T0, T0, T0, T0, T0, pd.NaT],
            "session_id": None, "quantity": 1.0, "price": 1.0,
        }
    )  # fmt: skip
    monkeypatch.setattr(protocols.datasets, "load", lambda name, data_dir: SimpleNamespace(events=events, catalog="c"))
    loaded, catalog = protocols.load_interactions("online_retail", None)
    assert catalog == "c"
    assert list(loaded.columns) == ["user_id", "item_id", "event_type", "event_timestamp"]
    # e2's repeat, the empty user, the impression, the missing item and the missing time are gone.
    assert loaded["user_id"].tolist() == ["u2", "u1"]
    assert loaded.index.tolist() == [1, 0]  # source row numbers, for the msr split's file order


def test_temporal_cutoff_is_the_timestamp_at_floor_of_share_n():
    rows = [(f"u{i % 7}", f"i{i % 11}", i) for i in range(95)] + [("u1", "i1", 85), ("u2", "i2", 85)]
    events = frame(rows)  # 97 events; two extra share minute 85
    split = temporal_split(events, pd.DataFrame(), "toy")
    ordered = events.sort_values("event_timestamp", kind="stable")
    assert split.cutoff == ordered["event_timestamp"].iloc[math.floor(0.9 * 97)]
    assert (split.train["event_timestamp"] < split.cutoff).all()
    assert (split.test["event_timestamp"] >= split.cutoff).all()
    assert len(split.train) + len(split.test) == 97
    assert (split.test["event_timestamp"] == T0 + pd.Timedelta(minutes=85)).sum() == 3  # ties all land in test

    validation = validation_split(split)
    assert validation.cutoff < split.cutoff and len(validation.train) + len(validation.test) == len(split.train)


def test_targets_cover_warm_users_and_new_excludes_their_train_items():
    train = [("u1", "a", 0), ("u1", "b", 1), ("u2", "a", 2), ("u3", "c", 3)]
    test = [("u1", "a", 10), ("u1", "d", 11), ("u1", "d", 12), ("u2", "a", 13), ("u4", "b", 14), ("u1", "z", 15)]
    split = Split("toy", "temporal", frame(train), frame(test), T0 + pd.Timedelta(minutes=10), pd.DataFrame())
    goals = targets(split)
    assert set(goals) == {"new", "all"}  # purchases only: no 'buy'
    assert goals["all"].users.tolist() == ["u1", "u2"]  # u3 has no test event, u4 no train event
    new = goals["new"]
    assert new.exclude_train and not goals["all"].exclude_train
    assert sorted(map(tuple, new.pairs.to_numpy())) == [("u1", "d"), ("u1", "z")]  # u2 only repeats: dropped
    assert sorted(goals["all"].pairs["item_id"][goals["all"].pairs["user_id"] == "u1"]) == ["a", "d", "z"]
    assert split.items.tolist() == ["a", "b", "c"] and split.all_items.tolist() == ["a", "b", "c", "d", "z"]
    assert split.counts()["warm_users"] == 2 and split.counts()["cold_test_items"] == 2


def test_buy_target_appears_with_views_and_holds_test_purchases():
    train = [("u1", "a", 0, "view"), ("u2", "b", 1, "purchase")]
    test = [("u1", "a", 10, "purchase"), ("u1", "c", 11, "view"), ("u2", "b", 12, "view")]
    split = Split("toy", "temporal", frame(train), frame(test), T0 + pd.Timedelta(minutes=10), pd.DataFrame())
    goals = targets(split)
    assert protocols.main_target(split) == "buy"
    assert goals["buy"].users.tolist() == ["u1"] and goals["buy"].pairs["item_id"].tolist() == ["a"]
    assert not goals["buy"].exclude_train


def recommenders_stratified(data: pd.DataFrame, ratio: float, seed: int) -> set:
    """The reference formulation, as in recommenders' _do_stratification (pandas sort, groupby, round)."""
    data = data.copy()
    np.random.seed(seed)
    data["random"] = np.random.rand(data.shape[0])
    data = data.sort_values(["item_id", "random"])
    groups = data.groupby("item_id")
    data["count"] = groups["item_id"].transform("count")
    data["rank"] = groups.cumcount() + 1
    return set(data.index[data["rank"] <= round(ratio * data["count"])])


def test_msr_split_takes_each_items_ratings_75_25_as_recommenders_does():
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{item}", int(rng.integers(0, 10_000))) for item in range(1, 13) for u in range(item)]
    events = frame(rows).sample(frac=1, random_state=3)  # file order != time order
    split = msr_stratified_split(events, pd.DataFrame())
    per_item = events["item_id"].value_counts()
    in_train = split.train["item_id"].value_counts().reindex(per_item.index, fill_value=0)
    assert (in_train == np.round(0.75 * per_item)).all()  # half to even: 2 -> 2, 6 -> 4, 10 -> 8
    assert in_train["i2"] == 2 and in_train["i6"] == 4 and in_train["i10"] == 8
    assert set(split.train.index) == recommenders_stratified(events.sort_index(), 0.75, 42)
    assert set(split.train.index).isdisjoint(split.test.index) and len(split.train) + len(split.test) == len(events)

    again = msr_stratified_split(events, pd.DataFrame())
    assert set(again.train.index) == set(split.train.index)
    other = msr_stratified_split(events, pd.DataFrame(), seed=7)
    assert set(other.train.index) != set(split.train.index)
    assert targets(split).keys() == {"default"} and targets(split)["default"].exclude_train


def test_msr_stratified_is_movielens_only():
    with pytest.raises(ValueError, match="MovieLens"):
        protocols.make_split("online_retail", "msr-stratified")
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.make_split("movielens", "random")


def test_movielens_msr_split_sizes(shared_data):
    split = protocols.make_split("movielens", "msr-stratified", shared_data)
    per_item = split.train["item_id"].value_counts().add(split.test["item_id"].value_counts(), fill_value=0)
    assert len(split.train) == int(np.round(0.75 * per_item).sum()) == 75_066
    assert len(split.test) == 24_934
    assert set(split.test["item_id"]) <= set(split.items)  # every item keeps round(0.75 n) >= 1 in train
    assert len(targets(split)["default"].users) == 943


def test_ranking_metrics_on_a_hand_computed_list():
    hits = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    metrics = ranking_metrics(hits, np.array([3, 1]), k=4)
    assert metrics["recall"] == pytest.approx([2 / 3, 0])
    assert metrics["precision"] == pytest.approx([2 / 4, 0])
    assert metrics["hit"] == pytest.approx([1, 0])
    dcg = 1 + 1 / math.log2(4)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # min(|T| = 3, K = 4) = 3 ideal hits
    assert metrics["ndcg"] == pytest.approx([dcg / ideal, 0])
    assert metrics["map"] == pytest.approx([(1 / 1 + 2 / 3) / 3, 0])
    # With K below |T| the ideal DCG and map's denominator stop at K.
    short = ranking_metrics(np.array([[0, 1]], dtype=bool), np.array([5]), k=2)
    assert short["ndcg"] == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3))])
    assert short["map"] == pytest.approx([(1 / 2) / 2])


class FixedScores:
    """A stub model: the same scores for every user, -inf for item 'e'."""

    name = "fixed"

    def score(self, users, items, target):
        table = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": -np.inf}
        return np.array([[table.get(i, 0.0) for i in items]] * len(users), dtype=np.float32)


def test_harness_excludes_train_items_and_counts_coverage():
    train = [("u1", "a", 0), ("u2", "b", 1), ("u1", "c", 2), ("u2", "d", 3), ("u2", "e", 4)]
    test = [("u1", "b", 10), ("u1", "a", 11), ("u2", "a", 12), ("u2", "x", 13)]
    split = Split("toy", "temporal", frame(train), frame(test), T0 + pd.Timedelta(minutes=10), pd.DataFrame())
    goals = targets(split)
    new = evaluate_target(FixedScores(), split, goals["new"], ks=(1, 2))
    # u1 ranks b, d (a and c excluded): target {b} -> hit at 1. u2 ranks a, c (b, d, e excluded): {a, x} -> 1 of 2.
    assert new["recall@1"] == pytest.approx((1 + 0.5) / 2)
    assert new["ndcg@2"] == pytest.approx((1 + 1 / (1 + 1 / math.log2(3))) / 2)
    assert new["coverage@2"] == pytest.approx(4 / 5)  # b, d, a, c of the 5 train items
    full = evaluate_target(FixedScores(), split, goals["all"], ks=(1,))
    assert full["recall@1"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # nothing excluded: both users get a
    assert full["coverage@1"] == pytest.approx(1 / 5)
