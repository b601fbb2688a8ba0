"""Feature services, named model + version: training and serving fetch by these, never by ad-hoc lists."""

from feast import FeatureService

from features.repo.views import item_catalog, item_popularity, user_activity, user_history

two_tower_v1 = FeatureService(
    name="two_tower_v1",
    features=[
        user_history[["history_items", "history_types"]],
        user_activity[["views_7d", "add_to_carts_7d", "purchases_30d"]],
        item_catalog[["category", "price", "text_embedding"]],
    ],
    owner="training@shoprec",
    description="Inputs of the two-tower retrieval model: the user's history and activity, the item's text.",
)

ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_activity, user_history, item_popularity, item_catalog[["category", "price"]]],
    owner="training@shoprec",
    description="Inputs of the multi-task ranker: user activity, item popularity and catalog attributes.",
)
