"""Evaluation data and splits (DESIGN.md, "Evaluation protocol"): interactions from a dataset adapter, the temporal
and msr-stratified splits, a validation split cut the same way from the end of train, and the per-user targets.

- temporal: all interactions sorted by time; cutoff = the timestamp at position floor(0.9 N); train before it,
  test at/after it. Targets 'new', 'all' and, where the data has more than purchases (Taobao), 'buy'.
- msr-stratified (MovieLens only): Microsoft Recommenders' python_stratified_split(ratio=0.75, min_rating=1,
  filter_by="item", seed=42), reproduced row for row; one target 'default'.
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ingest import datasets

EVENT_TYPES = ("view", "add_to_cart", "purchase")
COLUMNS = ["user_id", "item_id", "event_type", "event_timestamp"]
PROTOCOLS = ("temporal", "msr-stratified")
TEMPORAL_SHARE = 0.9
MSR_RATIO = 0.75
MSR_SEED = 42


def load_interactions(dataset: str, data_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, catalog): usable interactions sorted stably by time, and the adapter's catalog.

    Keeps rows with a user, an item, a timestamp and a view/add_to_cart/purchase type, and drops repeated event
    ids (Online Retail's ~5k exact duplicate lines share one). The index keeps the source row number, so the
    msr-stratified split can draw its random numbers in file order, as recommenders does on the raw u.data.
    """
    source = datasets.load(dataset, data_dir)
    events = source.events
    user = events["user_id"].astype("string").str.strip()
    item = events["item_id"].astype("string").str.strip()
    keep = (
        user.notna()
        & (user != "")
        & item.notna()
        & (item != "")
        & events["event_timestamp"].notna()
        & events["event_type"].isin(EVENT_TYPES)
        & ~events["event_id"].duplicated()
    )
    frame = pd.DataFrame(
        {
            "user_id": user[keep].astype(str),
            "item_id": item[keep].astype(str),
            "event_type": events.loc[keep, "event_type"].astype(str),
            "event_timestamp": events.loc[keep, "event_timestamp"],
        }
    )
    return frame.sort_values("event_timestamp", kind="stable"), source.catalog


@dataclass
class Split:
    """One train/test split of a dataset under a protocol. `share` is the train share it was cut with (0.9 of the
    events for temporal, 0.75 of each item's ratings for msr-stratified); validation_split reuses it."""

    dataset: str
    protocol: str
    train: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp | None
    catalog: pd.DataFrame
    share: float = TEMPORAL_SHARE

    @cached_property
    def items(self) -> np.ndarray:
        """The ranking universe: distinct train items, sorted."""
        return np.sort(self.train["item_id"].unique())

    @cached_property
    def all_items(self) -> np.ndarray:
        """Train items, then the items seen only in test (the cold-start slice ranks over these)."""
        cold = np.setdiff1d(self.test["item_id"].unique(), self.items)
        return np.concatenate([self.items, cold])

    @cached_property
    def warm_users(self) -> np.ndarray:
        """Users with >= 1 train and >= 1 test interaction, sorted."""
        return np.intersect1d(self.train["user_id"].unique(), self.test["user_id"].unique())

    def counts(self) -> dict:
        return {
            "train_events": len(self.train),
            "test_events": len(self.test),
            "train_users": int(self.train["user_id"].nunique()),
            "test_users": int(self.test["user_id"].nunique()),
            "train_items": len(self.items),
            "test_items": int(self.test["item_id"].nunique()),
            "warm_users": len(self.warm_users),
            "cold_test_items": len(self.all_items) - len(self.items),
        }


def temporal_split(events: pd.DataFrame, catalog: pd.DataFrame, dataset: str, share: float = TEMPORAL_SHARE) -> Split:
    """Cutoff = the timestamp at position floor(share * N) of the time-sorted events; train = before it, test =
    at/after it (so events sharing the cutoff second all land in test)."""
    ordered = events.sort_values("event_timestamp", kind="stable")
    position = min(int(np.floor(share * len(ordered))), len(ordered) - 1)
    cutoff = ordered["event_timestamp"].iloc[position]
    before = ordered["event_timestamp"] < cutoff
    return Split(dataset, "temporal", ordered[before], ordered[~before], cutoff, catalog, share)


def msr_stratified_split(
    events: pd.DataFrame,
    catalog: pd.DataFrame,
    ratio: float = MSR_RATIO,
    seed: int = MSR_SEED,
    dataset: str = "movielens",
) -> Split:
    """recommenders' python_stratified_split(data, ratio, min_rating=1, filter_by="item", seed), current version
    (recommenders/datasets/python_splitters.py, _do_stratification):

        np.random.seed(seed); data["random"] = np.random.rand(len(data))   # one draw per row, in row order
        data = data.sort_values([item, "random"])                          # shuffle within each item
        rank = cumcount within item + 1; count = item's row count
        train = rank <= round(ratio * count); test = the rest             # pandas round: half to even

    So an item with 2 ratings keeps both in train (round(1.5) = 2), one with 6 keeps 4 (round(4.5) = 4). The
    random numbers follow the source row order (u.data), which load_interactions keeps in the index; the dtype of
    the item ids does not matter since the shuffle is within each item. Older releases (reco_utils) shuffled each
    item's group with DataFrame.sample(random_state=seed) and cut at round(ratio * n): the same sizes per item,
    different rows.
    """
    data = events.sort_index(kind="stable")
    random = np.random.RandomState(seed).rand(len(data))  # == np.random.seed(seed); np.random.rand(n)
    item_codes = pd.factorize(data["item_id"])[0]
    order = np.lexsort((random, item_codes))
    sorted_codes = item_codes[order]
    rank = pd.Series(sorted_codes).groupby(sorted_codes).cumcount().to_numpy() + 1
    count = np.bincount(item_codes)[sorted_codes]
    in_train = np.empty(len(data), dtype=bool)
    in_train[order] = rank <= np.round(ratio * count)
    train, test = data[in_train], data[~in_train]
    by_time = {"by": "event_timestamp", "kind": "stable"}
    return Split(dataset, "msr-stratified", train.sort_values(**by_time), test.sort_values(**by_time), None, catalog,
                 ratio)  # fmt: skip


def make_split(dataset: str, protocol: str, data_dir: Path | None = None) -> Split:
    """Load a dataset and split it under a protocol; msr-stratified is defined for MovieLens only."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "msr-stratified" and dataset != "movielens":
        raise ValueError(f"protocol 'msr-stratified' is the MovieLens 100K benchmark protocol, not for {dataset!r}")
    events, catalog = load_interactions(dataset, data_dir)
    if protocol == "temporal":
        return temporal_split(events, catalog, dataset)
    return msr_stratified_split(events, catalog, dataset=dataset)


def validation_split(split: Split) -> Split:
    """A split of train cut the same way as the test split (used for tuning): temporal at the same share of train,
    msr-stratified with the same ratio and seed."""
    if split.protocol == "temporal":
        return temporal_split(split.train, split.catalog, split.dataset, split.share)
    return msr_stratified_split(split.train, split.catalog, split.share, dataset=split.dataset)


@dataclass
class Target:
    """What each evaluated user should find: distinct (user_id, item_id) pairs. exclude_train: the user's train
    items are removed from the ranking before the top-K is taken."""

    name: str
    pairs: pd.DataFrame
    exclude_train: bool

    @cached_property
    def users(self) -> np.ndarray:
        return np.sort(self.pairs["user_id"].unique())

    def restrict(self, items: np.ndarray) -> "Target":
        """The same target with only the given items (the users left without any are dropped)."""
        return Target(self.name, self.pairs[self.pairs["item_id"].isin(items)], self.exclude_train)


def targets(split: Split) -> dict[str, Target]:
    """Targets of the warm users (>= 1 train and >= 1 test interaction); a user with an empty set is dropped from
    that target. Test items unseen in train stay (they form the cold-start slice and cap the ceiling).

    temporal: 'new' (test items not among the user's train items; train items excluded from the ranking), 'all'
    (distinct test items; nothing excluded) and, where the data has event types besides purchase (Taobao), 'buy'
    (items purchased in test; nothing excluded). msr-stratified: 'default' (the user's test items; train items
    excluded), as recommenders ranks with remove_seen=True.
    """
    test = split.test[split.test["user_id"].isin(split.warm_users)]
    pairs = test[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    if split.protocol == "msr-stratified":
        return {"default": Target("default", pairs, exclude_train=True)}

    seen = split.train[["user_id", "item_id"]].drop_duplicates()
    flagged = pairs.merge(seen, on=["user_id", "item_id"], how="left", indicator=True)
    new = pairs[(flagged["_merge"] == "left_only").to_numpy()].reset_index(drop=True)
    result = {"new": Target("new", new, exclude_train=True), "all": Target("all", pairs, exclude_train=False)}
    if _has_other_events(split):
        bought = test.loc[test["event_type"] == "purchase", ["user_id", "item_id"]].drop_duplicates()
        result["buy"] = Target("buy", bought.reset_index(drop=True), exclude_train=False)
    return result


def main_target(split: Split) -> str:
    """The target tuning optimises: 'default' for msr-stratified, 'buy' where the data has it, else 'new'."""
    if split.protocol == "msr-stratified":
        return "default"
    return "buy" if _has_other_events(split) else "new"


def _has_other_events(split: Split) -> bool:
    # Where every event is a purchase (Online Retail, MovieLens) 'buy' would repeat 'all'.
    types = set(split.train["event_type"].unique()) | set(split.test["event_type"].unique())
    return bool(types - {"purchase"})
