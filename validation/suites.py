"""The contracts as GX Core 1.x expectation suites, in code.

Each expectation names the rule a failing row is quarantined under (meta["rule"]) and, in its notes, the failure it
guards against. Time bounds are suite parameters, so one suite serves every batch: the gate passes each batch's
own logical time. The gate prepares a few helper columns that GX cannot compute row by row from one column
(repeats, ids accepted before, parse failures); they are named as facts about the row.
"""

import great_expectations as gx
import great_expectations.expectations as gxe

from core.contract import EVENT_TYPES

EVENT_SUITE = "events"
CATALOG_SUITE = "catalog"


def _rule(expectation: gxe.Expectation, rule: str, guards: str) -> gxe.Expectation:
    expectation.meta = {"rule": rule}
    expectation.notes = guards
    return expectation


def event_suite() -> gx.ExpectationSuite:
    """Row-level rules for behaviour events. Parameters: oldest_allowed, newest_allowed (tz-aware timestamps)."""
    return gx.ExpectationSuite(
        name=EVENT_SUITE,
        expectations=[
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="event_id"), "event_id_missing",
                  "an event without an id cannot be told apart from a re-sent copy"),
            _rule(gxe.ExpectColumnValuesToBeInSet(column="event_id_first_in_batch", value_set=[True]),
                  "event_id_repeated_in_batch", "a client retry that put the same event twice in one batch"),
            _rule(gxe.ExpectColumnValuesToBeInSet(column="event_id_not_seen_before", value_set=[True]),
                  "event_id_already_accepted", "a re-sent batch or event double-counting in features"),
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="user_id"), "user_id_missing",
                  "anonymous rows that no user's features or training examples can use"),
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="item_id"), "item_id_missing",
                  "events about nothing: they would join no item features"),
            _rule(gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
                  "event_type_unknown", "a new or misspelt event type silently counted as none of the funnel steps"),
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp"), "event_timestamp_missing",
                  "a missing or unparseable time, which point-in-time joins cannot place"),
            _rule(gxe.ExpectColumnValuesToBeBetween(column="event_timestamp",
                                                    max_value={"$PARAMETER": "newest_allowed"}),
                  "event_timestamp_in_future", "client clocks far ahead leaking future events into features"),
            _rule(gxe.ExpectColumnValuesToBeBetween(column="event_timestamp",
                                                    min_value={"$PARAMETER": "oldest_allowed"}),
                  "event_timestamp_too_old",
                  "late arrivals beyond the retention window rewriting features of intervals already served"),
            _rule(gxe.ExpectColumnValuesToBeInSet(column="quantity_is_number", value_set=[True]),
                  "quantity_not_a_number", "a quantity that is present but not a number"),
            _rule(gxe.ExpectColumnValuesToBeBetween(column="quantity", min_value=0, strict_min=True),
                  "quantity_not_positive", "returns or adjustments posing as purchases"),
            _rule(gxe.ExpectColumnValuesToBeInSet(column="price_is_number", value_set=[True]),
                  "price_not_a_number", "a price that is present but not a number"),
            _rule(gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0), "price_negative",
                  "accounting adjustments posing as sales"),
            # A flag, not a rejection: new items appear in events before the catalog feed catches up.
            _rule(gxe.ExpectColumnValuesToBeInSet(column="item_known", value_set=[True], severity="warning",
                                                  result_format="SUMMARY"),  # a count is all a flag needs
                  "item_unknown", "items the catalog has never heard of (flagged, still accepted)"),
        ],
    )  # fmt: skip


def catalog_suite() -> gx.ExpectationSuite:
    """Row-level rules for a catalog feed."""
    return gx.ExpectationSuite(
        name=CATALOG_SUITE,
        expectations=[
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="item_id"), "item_id_missing",
                  "a product no event can refer to"),
            _rule(gxe.ExpectColumnValuesToBeInSet(column="item_id_first_in_feed", value_set=[True]),
                  "item_id_repeated", "two rows claiming to describe one item"),
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="category"), "category_missing",
                  "items the category features and cold-start paths cannot place"),
            _rule(gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0), "price_negative",
                  "a negative list price"),
            _rule(gxe.ExpectColumnValuesToNotBeNull(column="first_seen"), "first_seen_missing",
                  "an item with no age, which item-age features need"),
        ],
    )  # fmt: skip
