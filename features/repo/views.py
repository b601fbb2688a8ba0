"""Feature views, named entity + what they describe.

Windowed rows are daily snapshots: a row stamped t (midnight UTC ending a day) describes the events strictly before
t, so Feast's point-in-time join (rows stamped at or before the entity's time) can never hand a training example
its own event or a later one. Windows are whole days: views_7d at t counts the 7 days ending at t.
TTL: a snapshot is written every day for every user or item active in the last 30 days, so a row older than 2 days
means the pipeline stopped, or the entity went quiet more than 30 days ago; training joins then see no row (the
counts are zero) and the online read path reports the value as stale instead of serving it.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int64, String

from features.repo.entities import item, user
from features.repo.sources import item_catalog_source, item_popularity_source, user_activity_source, user_history_source

SNAPSHOT_TTL = timedelta(days=2)
OWNER = "features@shoprec"

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="views_7d", dtype=Int64, description="The user's views in the 7 days before t."),
        Field(name="add_to_carts_7d", dtype=Int64, description="The user's add-to-carts in the 7 days before t."),
        Field(name="purchases_30d", dtype=Int64, description="The user's purchases in the 30 days before t."),
        Field(name="last_event_age_s", dtype=Int64, description="Seconds from the user's last event before t to t."),
        Field(
            name="distinct_items_30d",
            dtype=Int64,
            description="Distinct items the user touched in the 30 days before t.",
        ),
        Field(
            name="recent_items",
            dtype=Array(String),
            description="The user's last 20 item ids before t, newest first (repeats kept).",
        ),
    ],
    source=user_activity_source,
    owner=OWNER,
    description="What a shopper did recently; a daily snapshot per user active in the last 30 days.",
    tags={"grain": "daily", "entity": "user", "used_by": "two_tower_v1,ranker_v1"},
)

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(0),  # a history does not go stale: the latest row is the user's past however long ago
    schema=[
        Field(
            name="history_items",
            dtype=Array(String),
            description="The user's last 500 events before t, newest first: their item ids (repeats kept).",
        ),
        Field(
            name="history_types",
            dtype=Array(Int64),
            description="The event type of each history_items entry: 0 view, 1 add_to_cart, 2 purchase "
            "(the index into core.contract.EVENT_TYPES).",
        ),
        Field(name="history_times", dtype=Array(Int64), description="Unix seconds of each history_items entry."),
    ],
    source=user_history_source,
    owner=OWNER,
    description="The user's own past, what the two-tower's user tower and the ranker's repeat features read; a row "
    "per user and active day, stamped at the midnight after it.",
    tags={"grain": "user_day", "entity": "user", "used_by": "two_tower_v1,ranker_v1"},
)

item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="views_7d", dtype=Int64, description="Views of the item in the 7 days before t."),
        Field(name="add_to_carts_7d", dtype=Int64, description="Add-to-carts of the item in the 7 days before t."),
        Field(name="purchases_30d", dtype=Int64, description="Purchases of the item in the 30 days before t."),
        Field(
            name="conversion_rate_30d",
            dtype=Float64,
            description="(purchases_30d + 10 p) / (views_30d + 10): purchases per view, smoothed towards the "
            "shop-wide rate p (capped at 1) with 10 pseudo-views. Above 1 where a source logs "
            "purchases without views (Online Retail logs no views).",
        ),
        Field(
            name="first_seen_age_s",
            dtype=Int64,
            description="Seconds from the item's first appearance (catalog or events) to t.",
        ),
    ],
    source=item_popularity_source,
    owner=OWNER,
    description="How the shop's items are doing; a daily snapshot per item active in the last 30 days.",
    tags={"grain": "daily", "entity": "item", "used_by": "ranker_v1"},
)

item_catalog = FeatureView(
    name="item_catalog",
    entities=[item],
    ttl=timedelta(0),  # descriptive attributes do not expire (0 = no limit in Feast)
    schema=[
        Field(name="title", dtype=String, description="The product's title."),
        Field(name="category", dtype=String, description="The product's category."),
        Field(name="price", dtype=Float64, description="List price."),
        Field(
            name="text_embedding",
            dtype=Array(Float32),
            description="all-MiniLM-L6-v2 embedding (384 floats, unit length) of title and description: how "
            "new and long-tail items without interactions are found.",
        ),
    ],
    source=item_catalog_source,
    owner=OWNER,
    description="What an item is, from the catalog; stamped with the item's first_seen.",
    tags={"grain": "item", "entity": "item", "used_by": "two_tower_v1,ranker_v1"},
)
