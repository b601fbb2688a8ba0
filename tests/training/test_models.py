"""The two-tower and the ranker, tiny preset, on a shop with taste: the loss falls, users' held-out items rank in
the top 20, a brand-new item is found from its title and category alone, the ranker's heads are probabilities, and
its candidate count is obeyed and tuned on a validation split."""

import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import HISTORY_LENGTH
from tests.training.conftest import tasteful_shop
from training import protocols
from training.candidates import RANKER_FEATURES, candidate_features, shortlist
from training.config import RankerConfig
from training.evaluate import RankedTwoTower
from training.examples import RANKER_SERVICE
from training.pipeline import LabelWindow, TwoTowerRecommender, ranker_examples, retrieval_examples
from training.train import RankerExamples, expected_calibration_error, train_ranker


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    events, catalog = tasteful_shop()
    last = events.groupby("user_id").tail(1)  # each user's latest purchase is held out
    train = events.drop(last.index)
    new_item = pd.DataFrame({"item_id": ["brand-new"], "title": ["kitchen mug number 1000"], "description": [None],
                             "category": ["mug"], "price": [2.5], "first_seen": [events["event_timestamp"].max()]})  # fmt: skip
    catalog = pd.concat([catalog, new_item], ignore_index=True)
    model = TwoTowerRecommender(preset_name="tiny", with_ranker=True, work_dir=tmp_path_factory.mktemp("fit"),
                                progress=False).fit(train, catalog)  # fmt: skip
    return model, train, last, catalog


def test_the_loss_falls_and_held_out_items_rank_in_the_top_20(fitted):
    model, train, last, _ = fitted
    report = model.retrieval.report
    assert report.losses[-1] < report.losses[0] * 0.9
    items = np.sort(train["item_id"].unique())
    scores = model.score(last["user_id"].to_numpy(), items, "all")
    ranks = (scores > scores[np.arange(len(last)), np.searchsorted(items, last["item_id"])][:, None]).sum(1)
    assert (ranks < 20).mean() > 0.6, f"only {(ranks < 20).mean():.0%} of held-out items in the top 20 of 100"


def test_a_new_item_is_found_from_its_text_and_category(fitted):
    model = fitted[0]
    kitchen = np.array([f"u0-{u}" for u in range(10)], dtype=object)
    toys = np.array([f"u3-{u}" for u in range(10)], dtype=object)
    items = np.array(["brand-new"], dtype=object)
    retrieval = model.retrieval
    assert np.isfinite(retrieval.items(items)).all()
    kitchen_scores = retrieval.users(kitchen) @ retrieval.items(items).T
    toy_scores = retrieval.users(toys) @ retrieval.items(items).T
    assert kitchen_scores.mean() > toy_scores.mean(), "a mug on the kitchen shelf is for the kitchen buyers"


def test_ranker_heads_are_probabilities_and_candidates_come_first(fitted):
    model, train, last, _ = fitted
    items = np.sort(train["item_id"].unique())
    scores = model.score(last["user_id"].to_numpy()[:5], items, "buy")
    candidates = scores >= 10.0
    assert candidates.sum(1).min() >= model.ranker_config.candidates, "every user gets a full candidate list"
    assert ((scores[candidates] >= 10.0) & (scores[candidates] <= 11.0)).all(), "10 + a probability"
    assert model.ranker.report.losses[-1] < model.ranker.report.losses[0]
    # The tasteful shop has only purchases: the interact and purchase heads are measured, add_to_cart is not.
    assert set(model.ranker.report.calibration_error) == {"interact", "purchase"}
    assert all(0 <= error <= 1 for error in model.ranker.report.calibration_error.values())


def test_ranker_probabilities_are_calibrated_where_labels_are_coin_flips_of_known_odds():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40_000, 4)).astype(np.float32)
    odds = 1 / (1 + np.exp(-(features @ np.array([1.5, -1.0, 0.5, 0.0]) - 2.0)))  # base rate about 0.18
    labels = (rng.random(len(features)) < odds).astype(np.float32)
    data = RankerExamples(features, np.stack([labels] * 3, 1), np.stack([np.ones_like(labels)] * 3, 1))
    _, report = train_ranker(data, RankerConfig(hidden=(32,), epochs=8, batch_size=512), device="cpu", progress=False)
    assert set(report.calibration_error) == {"interact", "add_to_cart", "purchase"}
    assert max(report.calibration_error.values()) < 0.02, report.calibration_error


def test_expected_calibration_error_on_a_hand_computed_case():
    # Bin of 0.1: predicted 0.2 in all, observed 0; bin of 0.9: predicted 1.8, observed 1. (0.2 + 0.8) / 4.
    assert expected_calibration_error(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 0])) == pytest.approx(0.25)
    assert expected_calibration_error(np.array([0.25, 0.25, 0.25, 0.25]), np.array([1, 0, 0, 0])) == 0.0


def test_examples_built_with_feast_train_where_feast_is_absent(tmp_path):
    """What bench/gpu_training.py relies on: a GPU machine with torch and no Feast trains on pickled examples."""
    events, catalog = tasteful_shop()
    recommender = TwoTowerRecommender(preset_name="tiny", work_dir=tmp_path / "fit", progress=False)
    store, as_of = recommender.feature_store(events, catalog, events["event_timestamp"].max())
    examples, config, _ = retrieval_examples(store, events, as_of, recommender.config)
    (tmp_path / "examples.pkl").write_bytes(pickle.dumps((examples, replace(config, epochs=1))))
    script = (
        "import pickle, sys; sys.modules['feast'] = None  # any import of feast now fails\n"
        "from training.train import train_two_tower\n"
        f"examples, config = pickle.loads(open({str(tmp_path / 'examples.pkl')!r}, 'rb').read())\n"
        "model, report = train_two_tower(examples, config, device='cpu', progress=False)\n"
        "print(report.losses[0], 'feast' in sys.modules and sys.modules['feast'] is not None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr
    loss, feast_loaded = done.stdout.split()
    assert np.isfinite(float(loss)) and feast_loaded == "False"


def test_the_ranker_reorders_its_candidate_count_of_retrieved_items_plus_the_users_own(fitted):
    model, train, last, catalog = fitted
    narrow = model.plus_ranker(train, catalog, "narrow", candidates=5)
    assert narrow.retrieval is model.retrieval and model.ranker_config.candidates == 30, "the original is untouched"
    users, items = last["user_id"].to_numpy()[:8], np.sort(train["item_id"].unique())
    reranked = (narrow.score(users, items, "all") >= 10.0).sum(1)
    own = train[train["user_id"].isin(users)].groupby("user_id")["item_id"].nunique().reindex(users).to_numpy()
    assert (reranked >= 5).all() and (reranked <= 5 + own).all()


def test_ranker_ages_count_from_the_moment_scored_not_from_the_snapshot_after_it(fitted):
    # The label windows are scored at their start midnight; a test split or a request comes mid-day, reading the
    # next midnight's snapshot. Its ages must be those of the moment itself, or every item looks hours older.
    model, train, last, _ = fitted
    snapshot = model.retrieval
    now = train["event_timestamp"].max()
    ahead_s = (snapshot.as_of - now).total_seconds()
    assert snapshot.now is None and ahead_s > 0
    users, items = last["user_id"].to_numpy()[:6], np.sort(train["item_id"].unique())
    vectors = snapshot.items(items)
    scores = snapshot.users(users) @ vectors.T
    _, at_snapshot = candidate_features(snapshot, users, items, vectors, scores, 10)
    _, at_now = candidate_features(replace(snapshot, now=now), users, items, vectors, scores, 10)
    ages = [RANKER_FEATURES.index(name) for name in
            ("log_age_since_user_item", "log_user_last_event_age", "log_item_first_seen_age")]  # fmt: skip
    own = at_snapshot[:, RANKER_FEATURES.index("in_history")] > 0
    assert own.any()
    np.testing.assert_allclose(np.expm1(at_now[own][:, ages].astype(np.float64)),
                               np.expm1(at_snapshot[own][:, ages].astype(np.float64)) - ahead_s, rtol=1e-5)  # fmt: skip
    others = [column for column in range(len(RANKER_FEATURES)) if column not in ages]
    np.testing.assert_array_equal(at_now[:, others], at_snapshot[:, others])


def test_a_shortlist_built_once_gives_candidate_features_at_any_later_moment(fitted):
    # Serving keeps a returning user's Shortlist and adds only the clock's columns per request: that must be what
    # candidate_features computes from scratch at each moment.
    model, train, last, _ = fitted
    snapshot = model.retrieval
    users, items = last["user_id"].to_numpy()[:6], np.sort(train["item_id"].unique())
    vectors = snapshot.items(items)
    scores = snapshot.users(users) @ vectors.T
    candidates, kept = shortlist(snapshot, users, items, vectors, scores, 10)
    end = train["event_timestamp"].max()
    for now in (end - pd.Timedelta(hours=30), end, snapshot.as_of):
        moment = replace(snapshot, now=now)
        again, features = candidate_features(moment, users, items, vectors, scores, 10)
        np.testing.assert_array_equal(again.item_id, candidates.item_id)
        np.testing.assert_array_equal(kept.features(moment), features)


def test_history_intent_weighs_the_users_events_on_the_item_as_repurchase_does(fitted):
    model, train, last, _ = fitted
    users, items = last["user_id"].to_numpy()[:6], np.sort(train["item_id"].unique())
    vectors = model.retrieval.items(items)
    candidates, features = candidate_features(model.retrieval, users, items, vectors,
                                              model.retrieval.users(users) @ vectors.T, 10)  # fmt: skip
    counts = train.groupby(["user_id", "event_type"]).size()  # the tasteful shop has purchases only
    bought = train.groupby(["user_id", "item_id"]).size()
    expected = bought.reindex(pd.MultiIndex.from_arrays([users[candidates.user], candidates.item_id])).fillna(0)
    assert set(counts.index.get_level_values(1)) == {"purchase"} and (expected > 0).any()
    np.testing.assert_allclose(features[:, RANKER_FEATURES.index("history_intent")],
                               np.log1p(4.0 * expected.to_numpy()), rtol=1e-6)  # fmt: skip


def test_each_candidates_own_record_similarity_and_ease_equal_a_count_over_the_users_history(fitted):
    # candidate_features matches items by integer codes over flat arrays; here each row is recomputed from the
    # user's history one event at a time. Half the items are left out, so some past items are outside them.
    model, train, last, _ = fitted
    retrieval = model.retrieval
    users, items = last["user_id"].to_numpy()[:6], np.sort(train["item_id"].unique())[::2]
    vectors = retrieval.items(items)
    candidates, features = candidate_features(retrieval, users, items, vectors, retrieval.users(users) @ vectors.T, 5)
    history = retrieval.columns(RANKER_SERVICE, "user_id", users)
    weights = retrieval.similarity.weights.toarray()
    column = {item: j for j, item in enumerate(retrieval.similarity.items)}
    feature = {name: features[:, RANKER_FEATURES.index(name)].astype(np.float64) for name in RANKER_FEATURES}
    assert (feature["in_history"] == 1).any() and (feature["in_history"] == 0).any()
    for row, (user, item) in enumerate(zip(candidates.user, candidates.item_id, strict=True)):
        past = [str(i) for i in history["user_history__history_items"][user]]
        types = list(history["user_history__history_types"][user])
        mine = [j for j, i in enumerate(past) if i == item]
        counts = [sum(types[j] == kind for j in mine) for kind in range(3)]
        assert feature["in_history"][row] == bool(mine)
        np.testing.assert_allclose([feature[f"history_{name}"][row] for name in ("views", "carts", "purchases")],
                                   np.log1p(counts), rtol=1e-6)  # fmt: skip
        assert feature["log_history_position"][row] == pytest.approx(np.log1p(mine[0] if mine else HISTORY_LENGTH))
        unit = retrieval.items(np.asarray(past + [item], dtype=object))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        cosines = unit[:-1] @ unit[-1]
        assert feature["history_max_similarity"][row] == pytest.approx(cosines.max(), abs=1e-5)
        assert feature["history_mean_similarity"][row] == pytest.approx(cosines.mean(), abs=1e-5)
        ease = sum(weights[column[i], column[item]] for i in set(past) if i in column) if item in column else 0.0
        assert feature["ease_score"][row] == pytest.approx(ease, abs=1e-5)


def test_the_candidate_count_is_tuned_on_the_validation_split(monkeypatch, tmp_path):
    events, catalog = tasteful_shop()
    monkeypatch.setattr(protocols, "load_interactions", lambda dataset, data_dir: (events, catalog))
    split = protocols.make_split("toy", "temporal", None)
    factory = RankedTwoTower(preset_name="tiny", work_dir=tmp_path, progress=False)
    params, table = factory.tune({"candidates": [5, 40]}, split, "all")
    assert table["candidates"].tolist() == [5, 40]
    assert table[["recall@20", "ndcg@20"]].apply(lambda column: column.between(0, 1)).all().all()
    best = table.sort_values(["recall@20", "ndcg@20"], ascending=False, kind="stable").iloc[0]
    assert params == {"candidates": best["candidates"]}
    assert table["recall@20"].max() > 0, "the tiny model finds something on the validation split"


def test_label_windows_stack_back_in_time_each_read_as_of_its_start(tmp_path):
    events, catalog = tasteful_shop()
    model = TwoTowerRecommender(preset_name="tiny", work_dir=tmp_path, progress=False)
    model.settle_config(cutoff_given=True)
    windows = model.label_windows(events, catalog)
    assert len(windows) == model.ranker_config.label_windows == 3
    starts = [window.retrieval.as_of for window in windows]
    assert starts == sorted(starts, reverse=True) and all(start == start.floor("D") for start in starts)
    assert all(window.retrieval.model is windows[-1].retrieval.model for window in windows), "one two-tower"
    ends = [events["event_timestamp"].max(), *starts[:-1]]
    for window, start, end in zip(windows, starts, ends, strict=True):
        stamps = window.labels["event_timestamp"]
        assert (stamps >= start).all() and (stamps <= end).all() and (stamps < end).any()
        before = events[events["event_timestamp"] < start]
        assert list(window.items) == sorted(before["item_id"].unique()), "candidates: the items seen before it"
        assert 0.03 < len(window.labels) / len(events) < 0.2  # about label_share each, cut at midnights
    labelled = pd.concat([window.labels for window in windows])
    assert labelled.index.is_unique and len(labelled) == (events["event_timestamp"] >= starts[-1]).sum()
    # Without time order (msr-stratified) there is one window: a random share of train.
    model.config = replace(model.config, history="all_but_target")
    ((past, labels, _),) = model._label_splits(events)
    assert len(past) + len(labels) == len(events) and 0.05 < len(labels) / len(events) < 0.15


def test_window_candidates_cut_from_a_larger_count_equal_those_built_for_it(tmp_path):
    events, catalog = tasteful_shop()
    model = TwoTowerRecommender(preset_name="tiny", work_dir=tmp_path, progress=False)
    model.settle_config(cutoff_given=True)
    window = model.label_windows(events, catalog)[0]
    fresh = replace(window, _built=())
    _, wide, _ = window.candidates(40)
    _, cut, cut_features = window.candidates(5)
    _, built, built_features = fresh.candidates(5)
    assert len(cut) < len(wide), "the smaller count keeps fewer rows"
    order = ["user", "item"]
    cut_rows, built_rows = cut.sort_values(order).index, built.sort_values(order).index
    pd.testing.assert_frame_equal(
        cut.loc[cut_rows].reset_index(drop=True), built.loc[built_rows].reset_index(drop=True)
    )
    np.testing.assert_allclose(cut_features[cut_rows], built_features[built_rows], rtol=1e-6)


def test_label_windows_without_events_are_a_clear_error():
    empty = tasteful_shop()[0].iloc[:0]
    windows = [LabelWindow(retrieval=None, items=np.array([], dtype=object), labels=empty)] * 2
    with pytest.raises(ValueError, match="hold no event"):
        ranker_examples(windows, RankerConfig())


def test_a_train_split_within_one_day_has_no_label_window_and_says_so(tmp_path):
    events, _ = tasteful_shop()
    events = events.assign(event_timestamp=pd.Timestamp("2024-03-01 12:00", tz="UTC"))
    model = TwoTowerRecommender(preset_name="tiny", work_dir=tmp_path, progress=False)
    model.settle_config(cutoff_given=True)
    with pytest.raises(ValueError, match="no past to learn a ranker from"):
        model._label_splits(events)
