"""Model inputs from the feature store: Feast point-in-time joins by feature service, turned into arrays.

Every feature a model reads comes through `features.training_sets.entity_features`, so training, evaluation and
serving (which reads the same services online) see the same definitions. Feature rows are stamped at midnight UTC,
so joining at an event's time and at the midnight that starts its day return the same row: examples are joined
once per (user, day), which is exact and many times cheaper than once per event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.training_sets import entity_features
from training.config import TwoTowerConfig
from training.inputs import ItemTable, UserInputs
from training.models import hash_buckets

if TYPE_CHECKING:  # Feast loads through features/, which first switches off typeguard's instrumentation
    from feast import FeatureStore

TWO_TOWER_SERVICE = "two_tower_v1"
RANKER_SERVICE = "ranker_v1"
EVENT_TYPE_CODES = {"view": 0, "add_to_cart": 1, "purchase": 2, "impression": 3, "click": 4}


def item_table(store: FeatureStore, item_ids, as_of, config: TwoTowerConfig, trained_ids,
               joined: pd.DataFrame | None = None) -> ItemTable:  # fmt: skip
    """Catalog features of item_ids as of as_of; items the catalog lacks get empty features (zeros). joined: the
    two_tower_v1 item rows of item_ids, in order, where the caller already has them (Retrieval.features)."""
    ids = np.asarray(item_ids, dtype=object)
    if joined is None:
        rows = pd.DataFrame({"item_id": ids, "event_timestamp": as_of})
        joined = entity_features(store, rows, TWO_TOWER_SERVICE, "item_id").set_index("item_id").reindex(ids)
    category = joined["item_catalog__category"]
    price = pd.to_numeric(joined["item_catalog__price"], errors="coerce").to_numpy(np.float64)
    texts = np.zeros((len(ids), config.text_dim), np.float32)
    vectors = joined["item_catalog__text_embedding"].to_numpy()
    found = np.array([v is not None and not isinstance(v, float) and len(v) > 0 for v in vectors], dtype=bool)
    if found.any():
        texts[found] = np.stack(vectors[found])
    categories = np.where(category.notna().to_numpy(), hash_buckets(category.fillna("").to_numpy(),
                                                                    config.category_buckets), 0)  # fmt: skip
    return ItemTable(
        ids=ids,
        id_buckets=hash_buckets(ids, config.id_buckets),
        categories=categories.astype(np.int64),
        prices=np.stack([np.log1p(np.nan_to_num(np.maximum(price, 0))), np.isnan(price)], 1).astype(np.float32),
        texts=texts,
        # pandas hashes object ids; np.isin on object arrays falls back to comparing every pair (minutes at 50k).
        trained=pd.Index(ids).isin(list(trained_ids)),
    )


def user_features(store: FeatureStore, users, times, service: str) -> pd.DataFrame:
    """The service's user features for each (user, time), one row per input row, in input order."""
    times = pd.to_datetime(pd.Series(times), utc=True).dt.floor("D")  # exact: feature rows are stamped at midnight
    rows = pd.DataFrame({"user_id": np.asarray(users, dtype=object), "event_timestamp": times.to_numpy()})
    joined = entity_features(store, rows, service, "user_id")
    return rows.merge(joined, on=["user_id", "event_timestamp"], how="left", validate="many_to_one")


def user_inputs(joined, config: TwoTowerConfig) -> UserInputs:
    """Tower inputs from user_features(...) rows (or the same columns as arrays, as serving reads them online):
    the latest history_length events, hashed in one pass."""
    length = config.history_length
    items = [_list(v)[:length] for v in np.asarray(joined["user_history__history_items"], dtype=object)]
    types = [_list(v)[:length] for v in np.asarray(joined["user_history__history_types"], dtype=object)]
    sizes = np.array([len(v) for v in items], dtype=np.int64)
    rows = np.repeat(np.arange(len(items)), sizes)
    columns = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    history_ids = np.zeros((len(items), length), np.int64)
    history_types = np.zeros((len(items), length), np.int64)
    if sizes.sum():
        history_ids[rows, columns] = hash_buckets(np.concatenate(items), config.id_buckets)
        history_types[rows, columns] = np.concatenate(types).astype(np.int64) + 1
    counts = ["user_activity__views_7d", "user_activity__add_to_carts_7d", "user_activity__purchases_30d"]
    activity = np.stack([zero_blanks(numbers(joined[name])) for name in counts], axis=1)
    return UserInputs(history_ids, history_types, np.log1p(activity.astype(np.float32)))


def numbers(values) -> np.ndarray:
    """A feature column (a frame's column, nullable or object where a join found nothing, or an array) as float64
    with NaN for blanks."""
    if isinstance(values, pd.Series):
        if not pd.api.types.is_numeric_dtype(values):
            values = pd.to_numeric(values, errors="coerce")
        return values.to_numpy(np.float64, na_value=np.nan)
    if values.dtype == object:
        return pd.to_numeric(values, errors="coerce").astype(np.float64)
    return values.astype(np.float64)


def zero_blanks(values: np.ndarray) -> np.ndarray:
    """np.nan_to_num(values, nan=0.0), without its cost where every value is finite already (most columns)."""
    return values if np.isfinite(values).all() else np.nan_to_num(values, nan=0.0)


def _list(value) -> list:
    """A list-valued feature as a list ([] where the join found no row)."""
    return [] if value is None or isinstance(value, float) else list(value)
