"""core.positions: the dict path (a few ids) and pandas' path (many) give the same positions, -1 for unknowns."""

import numpy as np
import pandas as pd

from core.positions import FEW, Positions, positions_of


def test_few_and_many_lookups_agree_with_pandas():
    rng = np.random.default_rng(0)
    ids = np.array([f"item-{i}" for i in rng.permutation(20_000)], dtype=object)
    positions = Positions(ids)
    for size in (1, 7, FEW, FEW + 1, 5_000):  # both sides of the switch
        wanted = np.append(ids[rng.integers(0, len(ids), size)], "no-such-item")
        got = positions.of(wanted)
        np.testing.assert_array_equal(got, pd.Index(ids).get_indexer(wanted))
        assert got.dtype == np.int64 and got[-1] == -1
    assert positions.of([]).shape == (0,)
    assert list(positions_of(["a", "b"], ["b", "c", "a", "b"])) == [1, -1, 0, 1]
    assert list(positions.of(iter(["item-3", "x"]))) == [positions.index.get_loc("item-3"), -1]


def test_a_server_s_positions_look_a_few_ids_up_in_the_dict_even_over_a_large_index(monkeypatch):
    ids = np.array([f"item-{i}" for i in range(20_000)], dtype=object)
    positions = Positions(ids)
    assert positions.index.isin(["item-5"]).sum() == 1  # a load step asked for the index: no dict yet
    positions.for_requests()
    monkeypatch.setattr(pd.Index, "get_indexer", lambda *_: (_ for _ in ()).throw(AssertionError("pandas")))
    assert positions.of(["item-19999", "nope", "item-0"]).tolist() == [19999, -1, 0]
