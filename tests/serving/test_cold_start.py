"""The cold start's popularity order: the champion's rows sorted once at load, filtered per request."""

import numpy as np

from serving.recommend import _first_allowed


def test_the_first_allowed_rows_equal_sorting_the_allowed_popularity_per_request():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, k = int(rng.integers(1, 300)), int(rng.integers(1, 40))
        popularity = rng.integers(0, 5, n).astype(float)  # many ties: their order is the rows'
        allowed = rng.random(n) < rng.random()  # from nearly none to nearly all
        masked = np.where(allowed, popularity, -np.inf)
        expected = np.argsort(-masked, kind="stable")[:k]
        expected = expected[np.isfinite(masked[expected])]
        np.testing.assert_array_equal(_first_allowed(np.argsort(-popularity, kind="stable"), allowed, k), expected)
