"""The HTTP contract of the recommendation service: request and response models, with the limits a client can hit.

Every limit is a validation rule, so a request outside it is a 400 naming the field (BentoML answers pydantic
failures with 400), never a 500 further down.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

MAX_K = 100
MAX_LISTED = 500  # items in exclude or session_items
MAX_ID_LENGTH = 128

# Ids are trimmed and must keep a character: the pattern puts "not blank" in the schema clients (and schemathesis) read.
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, strip_whitespace=True, pattern=r"\S")]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, strip_whitespace=True, pattern=r"\S")]
Reason = Literal["retrieved", "repurchase", "popular", "similar"]
Status = Literal["fresh", "stale", "missing", "unavailable"]


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="Higher is better; comparable within one response only.")
    reason: Reason = Field(
        description="retrieved: the two-tower found it for this user and the ranker kept it; repurchase: one of "
        "the user's own past items, ranked back up; popular: recent popularity (unknown or cold user); similar: "
        "close to the session's items (cold user with session_items)."
    )


class FeatureStatus(BaseModel):
    clock: Literal["wall", "shop"] = Field(
        description="What freshness was judged against: the wall clock (a live shop) or the shop's logical time "
        "(the newest accepted batch: a replayed shop)."
    )
    as_of: str = Field(description="The moment freshness was judged at (ISO 8601, UTC).")
    views: dict[str, Status] = Field(
        description="Per feature view read for this request: fresh, stale (older than its TTL: blanked, not used "
        "as fresh), missing, or unavailable (the online store could not be read: the answer is a fallback). Item "
        "views report the worst status among the candidates."
    )
    stale: list[str] = Field(description="The views that were stale for this request.")


class Recommendations(BaseModel):
    items: list[RecommendedItem]
    model_version: str = Field(description="The champion tag that answered (model store name:version).")
    request_id: str
    feature_status: FeatureStatus
    fallback: str | None = Field(None, description="Why the answer is not personalised, when it is not.")


class SimilarItems(BaseModel):
    item_id: str
    items: list[RecommendedItem]
    model_version: str
    request_id: str
    embedded_from_text: bool = Field(
        description="The item was not in the champion's training data: its vector came from its text and category."
    )
