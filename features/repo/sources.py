"""Offline sources: the parquet tables features/build.py writes under SHOPREC_HOME/features/.

Each windowed table is a folder with one file per day (read with a glob), so re-building a day rewrites exactly that file.
created_timestamp is the logical time of the build that wrote a row: when a backfill rewrites an interval, Feast
prefers its rows over older ones stamped with the same event_timestamp.
"""

from feast import FileSource
from feast.data_format import ParquetFormat

from core.layout import Layout
from core.settings import get_settings

FEATURES_DIR = Layout(get_settings().home).features  # where this process's settings put the tables


def _source(name: str, path: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=str(FEATURES_DIR / path), file_format=ParquetFormat(),
                      timestamp_field="event_timestamp",
                      created_timestamp_column="created_timestamp", description=f"features/build.py -> {path}")  # fmt: skip


user_activity_source = _source("user_activity", "user_activity/*.parquet")
item_popularity_source = _source("item_popularity", "item_popularity/*.parquet")
user_history_source = _source("user_history", "user_history/*.parquet")
item_catalog_source = _source("item_catalog", "item_catalog.parquet")
