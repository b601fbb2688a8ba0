"""Where retraining was made faster, the fast path gives what the slow one gave: the retrieval's joins, each id
joined once, equal the per-call joins row for row; the multi-tensor AdamW trains the same weights to the bit."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from features.training_sets import entity_features
from tests.training.conftest import tasteful_shop
from training import pipeline
from training import train as training_loop
from training.examples import RANKER_SERVICE, TWO_TOWER_SERVICE, item_table, user_features
from training.pipeline import TwoTowerRecommender, retrieval_examples
from training.train import train_two_tower


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    events, catalog = tasteful_shop()
    model = TwoTowerRecommender(preset_name="tiny", work_dir=tmp_path_factory.mktemp("fit"), progress=False)
    return model.fit_retrieval(events, catalog, events["event_timestamp"].max()), events


def _same(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    """Equal column by column, list features element by element (a missing row is None or NaN in either)."""
    assert list(fast.columns) == list(slow.columns) and len(fast) == len(slow)
    for column in slow.columns:
        for a, b in zip(fast[column].to_numpy(), slow[column].to_numpy(), strict=True):
            if isinstance(b, (list, np.ndarray)):
                assert list(a) == list(b), column
            else:
                assert (pd.isna(a) and pd.isna(b)) or a == b, (column, a, b)


def test_joins_each_id_once_equal_the_per_call_joins_row_for_row(fitted):
    model, events = fitted
    retrieval = replace(model.retrieval)  # a fresh cache
    users = np.sort(events["user_id"].unique()).astype(object)
    items = np.sort(events["item_id"].unique()).astype(object)
    as_of = retrieval.as_of
    for service in (TWO_TOWER_SERVICE, RANKER_SERVICE):
        # Asked in overlapping pieces, with repeats and an unknown id: the later calls join only what is new.
        first = retrieval.features(service, "user_id", users[:40])
        asked = np.concatenate([users[20:], users[:5], ["nobody"]]).astype(object)
        fast = retrieval.features(service, "user_id", asked).reset_index(drop=True)
        slow = user_features(retrieval.store, asked, [as_of] * len(asked), service)
        _same(first.reset_index(drop=True), user_features(retrieval.store, users[:40], [as_of] * 40, service)[
            list(first.columns)])  # fmt: skip
        _same(fast, slow[list(fast.columns)])
        picked = np.concatenate([items[::2], items[:7], ["never-seen"]]).astype(object)
        retrieval.features(service, "item_id", items[:10])
        fast = retrieval.features(service, "item_id", picked)
        rows = pd.DataFrame({"item_id": picked, "event_timestamp": as_of})
        slow = entity_features(retrieval.store, rows, service, "item_id").set_index("item_id").reindex(picked)
        _same(fast.reset_index(drop=True), slow[list(fast.columns)].reset_index(drop=True))
    # What the models read from them is the same too.
    slow_table = item_table(retrieval.store, picked, as_of, retrieval.model.config, retrieval.trained_ids)
    np.testing.assert_array_equal(replace(model.retrieval).items(picked), retrieval.items(picked))
    joined = retrieval.features(TWO_TOWER_SERVICE, "item_id", picked)
    fast_table = item_table(retrieval.store, picked, as_of, retrieval.model.config, retrieval.trained_ids, joined)
    for name in ("id_buckets", "categories", "prices", "texts", "trained"):
        np.testing.assert_array_equal(getattr(fast_table, name), getattr(slow_table, name))


def test_a_copy_for_another_store_or_time_starts_with_no_joins(fitted):
    model, _ = fitted
    retrieval = model.retrieval
    retrieval.features(TWO_TOWER_SERVICE, "user_id", ["u0-1"])
    assert retrieval._joined and not replace(retrieval, as_of=retrieval.as_of - pd.Timedelta("1D"))._joined


def test_the_multi_tensor_adamw_trains_the_same_weights_as_the_per_parameter_one(fitted, monkeypatch):
    model, events = fitted
    examples, config, _ = retrieval_examples(model.retrieval.store, events, model.retrieval.as_of, model.config)
    config = replace(config, epochs=2, max_epoch_examples=2000)
    fast, _ = train_two_tower(examples, config, device="cpu", progress=False)

    def per_parameter(model_, config_):
        return torch.optim.AdamW(model_.parameters(), lr=config_.lr, weight_decay=config_.weight_decay, foreach=False)

    monkeypatch.setattr(training_loop, "_adamw", per_parameter)
    slow, _ = train_two_tower(examples, config, device="cpu", progress=False)
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_main_two_tower_trained_in_a_second_process_is_the_one_trained_in_line(tmp_path, monkeypatch):
    events, catalog = tasteful_shop()
    cutoff = events["event_timestamp"].iloc[int(len(events) * 0.9)]
    train = events[events["event_timestamp"] < cutoff]
    fits = {}
    # Bitwise equality holds at equal thread counts: the second process trains on half the caller's threads, and
    # at 2 threads against 1 the float sums run in another order (the same model to rounding, not to the bit).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cores in (2, 1):  # 1: no core to spare, everything in line as before
            monkeypatch.setattr(pipeline.os, "cpu_count", lambda cores=cores: cores)
            model = TwoTowerRecommender(preset_name="tiny", with_ranker=True, work_dir=tmp_path / str(cores),
                                        progress=False)  # fmt: skip
            fits[cores] = model, model.fit_with_windows(train, catalog, cutoff)
    finally:
        torch.set_num_threads(threads)
    (parallel, parallel_windows), (serial, serial_windows) = fits[2], fits[1]
    for (name, a), b in zip(parallel.retrieval.model.state_dict().items(),
                            serial.retrieval.model.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    assert parallel.retrieval.report.losses == serial.retrieval.report.losses
    for fast, slow in zip(parallel_windows, serial_windows, strict=True):
        _, fast_frame, fast_features = fast.candidates(10)
        _, slow_frame, slow_features = slow.candidates(10)
        pd.testing.assert_frame_equal(fast_frame, slow_frame)
        np.testing.assert_array_equal(fast_features, slow_features)
