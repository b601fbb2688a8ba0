"""Point-in-time training sets: Feast's get_historical_features for (user, item, time) rows taken from events.

One row comes back per row asked for, in the order asked. Feast's file offline store silently collapses entity rows
that share their keys and timestamp (feast-dev/feast#6787): two purchases of one item by one user in the same second
would become one training example. So the distinct (user, item, time) keys are joined once and the features are
merged back onto every row, whatever offline store is configured.
"""

import pandas as pd
from feast import FeatureStore

KEYS = ["user_id", "item_id", "event_timestamp"]


def training_set(store: FeatureStore, rows: pd.DataFrame, service: str) -> pd.DataFrame:
    """rows: user_id, item_id, event_timestamp (UTC) and any labels; returned with the service's features added
    as view__feature columns. Feature rows are stamped at or before each row's time and count only events before
    their stamp, so no feature sees the row's own event or a later one."""
    if rows.empty:
        raise ValueError("no entity rows: a training set needs at least one (user_id, item_id, event_timestamp)")
    missing = [c for c in KEYS if c not in rows.columns]
    if missing:
        raise ValueError(f"entity rows lack column(s) {', '.join(missing)}")
    rows = rows.assign(event_timestamp=_utc(rows["event_timestamp"]))
    keys = rows[KEYS].drop_duplicates().reset_index(drop=True)
    features = store.get_historical_features(entity_df=keys, features=store.get_feature_service(service),
                                             full_feature_names=True).to_df()  # fmt: skip
    features["event_timestamp"] = _utc(features["event_timestamp"])
    joined = rows.merge(features, on=KEYS, how="left", validate="many_to_one")
    assert len(joined) == len(rows), "the point-in-time join must return one row per entity row"
    return joined


def entity_features(store: FeatureStore, rows: pd.DataFrame, service: str, key: str) -> pd.DataFrame:
    """The service's features of one entity (key: user_id or item_id) for (key, event_timestamp) rows, point in
    time: one row back per distinct row asked for. Serving-side features of a user do not depend on the item, so
    joining them once per user and time (not once per example) is the same join, many times smaller."""
    rows = rows[[key, "event_timestamp"]].assign(event_timestamp=_utc(rows["event_timestamp"]))
    rows = rows.drop_duplicates().reset_index(drop=True)
    refs = [f"{p.name}:{f.name}" for p in store.get_feature_service(service).feature_view_projections
            if store.get_feature_view(p.name).entity_columns[0].name == key for f in p.features]  # fmt: skip
    if rows.empty or not refs:
        raise ValueError(f"nothing to join: {len(rows)} rows, {len(refs)} features of {service} keyed on {key}")
    features = store.get_historical_features(entity_df=rows, features=refs, full_feature_names=True).to_df()
    features["event_timestamp"] = _utc(features["event_timestamp"])
    return rows.merge(features, on=[key, "event_timestamp"], how="left", validate="one_to_one")


def _utc(stamps: pd.Series) -> pd.Series:
    stamps = pd.to_datetime(stamps)
    stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    return stamps.astype("datetime64[ns, UTC]")
