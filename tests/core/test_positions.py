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
