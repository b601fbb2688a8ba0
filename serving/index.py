"""The ANN index over the catalog's item vectors: exact inner-product search for small catalogs, HNSW above.

Vectors are unit length, so inner product is cosine. Below EXACT_UP_TO items an exact flat scan of one query costs
well under a millisecond on a CPU and is never wrong; above it HNSW answers in about constant time.
bench/training.py measures recall@100 of HNSW against the exact scan and the time per query of both. Serving
builds the index when it loads a champion (serving/champion.py), from the vectors it computes: training never
builds or imports it.
"""

import numpy as np

EXACT_UP_TO = 50_000
HNSW_NEIGHBOURS = 32  # graph degree M: recall rises, memory grows linearly
HNSW_EF_SEARCH = 128  # candidates examined per query: recall rises, latency grows


def build_index(vectors: np.ndarray, kind: str = "auto"):
    """kind: auto (exact up to EXACT_UP_TO items), exact, or hnsw."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    kind = ("exact" if len(vectors) <= EXACT_UP_TO else "hnsw") if kind == "auto" else kind
    if kind == "exact":
        index = faiss.IndexFlatIP(vectors.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 2 * HNSW_EF_SEARCH
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"unknown index kind {kind!r}: auto, exact or hnsw")
    index.add(vectors)
    return index


def recall_at(index, exact, queries: np.ndarray, k: int = 100) -> float:
    """Share of the exact top-k that the index also returns, averaged over queries."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, found = index.search(queries, k)
    _, truth = exact.search(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))
