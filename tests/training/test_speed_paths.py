"""Where retraining was made faster, the fast path gives what the slow one gave: the retrieval's joins, each id
joined once, equal the per-call joins row for row; the multi-tensor AdamW trains the same weights to the bit; the
user tower's pooling as one matmul gives the broadcast sums' vectors and gradients; a few ids hashed through the memo
get the buckets pandas gives them."""

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


def _broadcast_user_tower(tower, history_ids, history_types, numbers):
    """The user tower as first written: (weights[..., None] * h).sum(1) and (h * present).sum(1) / n."""
    present = history_ids > 0
    h = tower.id_embedding(history_ids) + tower.event_type(history_types)
    h = h + tower.position(torch.arange(history_ids.shape[1]))[None]
    weights = tower.attention(h).squeeze(-1).masked_fill(~present, -1e4).softmax(-1) * present
    attended = (weights[..., None] * h).sum(1)
    mean = (h * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1)
    empty = (~present.any(1)).float()[:, None]
    return torch.nn.functional.normalize(tower.mlp(torch.cat([attended, mean, numbers, empty], dim=-1)), dim=-1)


def test_the_pooled_user_tower_gives_the_broadcast_sums_vectors_and_gradients():
    from training.config import preset
    from training.models import TwoTower

    torch.manual_seed(0)
    tower = TwoTower(replace(preset("full")[0], id_buckets=4096)).user_tower
    for parameter in tower.parameters():  # weights far from their small start, so every term matters
        torch.nn.init.normal_(parameter, std=0.3)
    lengths = torch.tensor([0, 1, 37, 100])  # a newcomer, one event, some, a full history
    padding = torch.arange(100)[None] >= lengths[:, None]
    ids = torch.randint(1, 4096, (4, 100)).masked_fill(padding, 0)
    types = torch.randint(1, 6, (4, 100)).masked_fill(padding, 0)
    numbers = torch.rand(4, 3)
    pooled, broadcast = tower(ids, types, numbers), _broadcast_user_tower(tower, ids, types, numbers)
    torch.testing.assert_close(pooled, broadcast, rtol=1e-5, atol=1e-6)
    parameters = list(tower.parameters())
    for fast, slow in zip(torch.autograd.grad(pooled.square().sum(), parameters),
                          torch.autograd.grad(broadcast.square().sum(), parameters), strict=True):  # fmt: skip
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_a_few_ids_hashed_through_the_memo_get_the_buckets_pandas_gives():
    from training.models import _hashed, hash_buckets

    rng = np.random.default_rng(0)
    many = np.array([f"item-{i}" for i in rng.integers(0, 10**6, 5000)], dtype=object)
    few = np.concatenate([many[:50], np.array([1, 1.0, "1", True, "01"], dtype=object)])  # 1 and 1.0 differ
    for buckets in (1024, 1 << 16):
        assert (hash_buckets(many, buckets) == _hashed(many, buckets)).all()  # the big call hashes directly
        first, again = hash_buckets(few, buckets), hash_buckets(few, buckets)  # hashed, then remembered
        assert (first == _hashed(few, buckets)).all() and (again == first).all()


def test_ids_remembered_ahead_are_not_hashed_again_and_get_the_same_buckets(monkeypatch):
    from training import models

    catalog = np.array([f"sku-{i}" for i in range(2000)] + [7, 7.5], dtype=object)
    expected = models._hashed(catalog, 4096)
    models.remember_buckets(catalog, 4096)
    hashed = []
    monkeypatch.setattr(models, "_hashed", lambda values, buckets: hashed.append(len(values)) or expected[:0])
    history = catalog[[5, 1999, 5, 2000, 2001, 17]]
    assert (models.hash_buckets(history, 4096) == expected[[5, 1999, 5, 2000, 2001, 17]]).all()
    assert hashed == []  # every id was remembered at load: no request hashes
