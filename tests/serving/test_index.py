"""The ANN index: exact below the threshold, HNSW above it with high recall against the exact scan."""

import numpy as np

from serving import index as ann


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_small_catalogs_get_an_exact_index_that_finds_the_true_nearest():
    vectors = unit_vectors(1000, 0)
    index = ann.build_index(vectors)
    assert type(index).__name__ == "IndexFlatIP"
    _, found = index.search(vectors[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_hnsw_recall_at_100_against_exact_search():
    vectors = unit_vectors(20_000, 1)
    queries = unit_vectors(200, 2)
    hnsw, exact = ann.build_index(vectors, "hnsw"), ann.build_index(vectors, "exact")
    assert type(hnsw).__name__ == "IndexHNSWFlat"
    assert ann.recall_at(hnsw, exact, queries, 100) > 0.9
