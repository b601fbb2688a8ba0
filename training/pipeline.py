"""The production recommender end to end: fit the two-tower (and the ranker) from the feature store, score users.

`TwoTowerRecommender` is what the retrain DAG trains and what evaluation measures on the benchmark protocols: it
builds its features with the production feature code from the events it is given (train events only), trains,
and scores (users x items) through the same feature services serving reads.
The ranker learns from label windows at the end of train: a two-tower trained on the events before the oldest
window retrieves candidates for each window's users (plus their own past items), reading their features as of the
window's start, the window's events label them, and the ranker learns which of them the user took. At scoring time
the two-tower trained on all train events retrieves and the ranker reorders.
Beside the two-tower, each retrieval holds EASE^R item-to-item weights fitted on the same events: the ranker reads
them as one more view of the candidate (training/item_similarity.py).
"""

import copy
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from core.contract import as_utc
from features.training_sets import entity_features
from training.candidates import RANKER_FEATURES, candidate_features
from training.config import RankerConfig, TwoTowerConfig, preset
from training.examples import (
    TWO_TOWER_SERVICE,
    item_table,
    numbers,
    user_features,
    user_inputs,
    zero_blanks,
)
from training.item_similarity import ItemSimilarity
from training.models import Ranker, TwoTower
from training.offline_store import EMBEDDING_CACHE, store_for_events
from training.train import (
    RankerExamples,
    RetrievalExamples,
    TrainReport,
    held_out,
    item_vectors,
    on_cpu,
    train_ranker,
    train_two_tower,
    train_two_tower_with_threads,
    user_vectors,
)


@dataclass
class Retrieval:
    """A trained two-tower with the store it reads, the catalog it was trained on and the item-to-item weights
    fitted on the same events."""

    model: TwoTower
    store: object  # feast.FeatureStore
    as_of: pd.Timestamp
    trained_ids: np.ndarray
    report: TrainReport
    similarity: ItemSimilarity
    now: pd.Timestamp | None = None  # the moment scores are for, which ages count from (None: as_of). Features
    #                                  are daily snapshots, so as_of is the midnight after it: a test split cut at
    #                                  03:51 reads the next midnight's snapshot, and without `now` every age would
    #                                  be 20 hours older than at the label windows, which start at their as_of

    _joined: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # (service, key) -> the
    #                   features joined so far, indexed by id. Every join reads the same store as of as_of, so an
    #                   id's row never changes: each id is joined once, not once per scoring call (evaluation scores
    #                   users in chunks against the same items, target after target). Not carried by replace().

    @property
    def scored_at(self) -> pd.Timestamp:
        return self.as_of if self.now is None else self.now

    def features(self, service: str, key: str, ids) -> pd.DataFrame:
        """The service's features of one entity (key: user_id or item_id) as of as_of, one row per id in order
        (ids may repeat), indexed by id; only the ids not joined before go to the store."""
        ids = pd.Index(np.asarray(ids, dtype=object))
        cached = self._joined.get((service, key))
        missing = ids.unique() if cached is None else ids.unique().difference(cached.index, sort=False)
        if len(missing):
            # Users at their day's midnight, as user_features joins them (exact: rows are stamped at midnight).
            as_of = self.as_of.floor("D") if key == "user_id" else self.as_of
            rows = pd.DataFrame({key: missing.to_numpy(object), "event_timestamp": as_of})
            fresh = entity_features(self.store, rows, service, key).drop(columns="event_timestamp").set_index(key)
            cached = fresh if cached is None else pd.concat([cached, fresh])
            self._joined[(service, key)] = cached
        return cached.reindex(ids)

    def columns(self, service: str, key: str, ids):
        """The same features as a mapping of feature name -> column, one row per id: what the towers' inputs and
        the ranker's features read (here the joined frame itself; serving gives numpy arrays, cheaper at one
        user than any frame)."""
        return self.features(service, key, ids)

    def number_columns(self, service: str, key: str, ids, names) -> dict[str, np.ndarray]:
        """Some numeric feature columns, one row per id, as float64 with a blank (no row, or a stale one) as 0."""
        table = self.columns(service, key, ids)
        return {name: zero_blanks(numbers(table[name])) for name in names}

    def users(self, user_ids) -> np.ndarray:
        joined = self.columns(TWO_TOWER_SERVICE, "user_id", user_ids)
        return user_vectors(self.model, user_inputs(joined, self.model.config))

    def items(self, item_ids) -> np.ndarray:
        joined = self.features(TWO_TOWER_SERVICE, "item_id", item_ids)
        return item_vectors(self.model, item_table(self.store, item_ids, self.as_of, self.model.config,
                                                   self.trained_ids, joined))  # fmt: skip


def fit_retrieval(store, train: pd.DataFrame, as_of: pd.Timestamp, config: TwoTowerConfig, device="auto",
                  progress=True, now: pd.Timestamp | None = None, trainer=train_two_tower) -> Retrieval:  # fmt: skip
    """Two-tower on every train event as a positive, user inputs point in time from the feature store; and the
    EASE^R item-to-item weights of the same events. trainer: train_two_tower, or what runs it elsewhere."""
    examples, config, trained_ids = retrieval_examples(store, train, as_of, config)
    model, report = trainer(examples, config, device=device, progress=progress)
    return Retrieval(model.cpu(), store, as_of, trained_ids, report, ItemSimilarity.fit(train), now)


def retrieval_examples(store, train: pd.DataFrame, as_of: pd.Timestamp, config: TwoTowerConfig):
    """(RetrievalExamples, config with id_buckets sized, trained item ids): every train event is a positive."""
    trained_ids = np.sort(train["item_id"].unique())
    if not config.id_buckets:
        config = replace(config, id_buckets=max(1024, 1 << int(np.ceil(np.log2(2 * len(trained_ids) + 1)))))
    catalog = item_table(store, trained_ids, as_of, config, trained_ids)
    item_rows = np.searchsorted(trained_ids, train["item_id"].to_numpy(object))
    stamps = pd.to_datetime(train["event_timestamp"], utc=True)
    if config.history == "before":
        keys = pd.DataFrame({"user_id": train["user_id"].to_numpy(object), "day": stamps.dt.floor("D").to_numpy()})
        order = stamps.astype("int64").to_numpy().astype(np.float64)
    else:  # every other train event of the user: their state at the end of train
        keys = pd.DataFrame({"user_id": train["user_id"].to_numpy(object), "day": as_of})
        order = np.random.default_rng(config.seed).random(len(train))
    distinct = keys.drop_duplicates().reset_index(drop=True)
    user_rows = distinct.reset_index().merge(keys, on=["user_id", "day"], how="right")["index"].to_numpy()
    joined = user_features(store, distinct["user_id"], distinct["day"], TWO_TOWER_SERVICE)
    users = user_inputs(joined, config)
    if config.history == "all_but_target":
        # The held-out validation events must not be anyone's input either, or validation measures echo.
        _, valid = held_out(order)
        for row, bucket in zip(user_rows[valid], catalog.id_buckets[item_rows[valid]], strict=True):
            hit = users.history_ids[row] == bucket
            users.history_ids[row, hit], users.history_types[row, hit] = 0, 0
    return RetrievalExamples(users, user_rows, catalog, item_rows, order), config, trained_ids


def _training_meanwhile(work):
    """A trainer for fit_retrieval that runs work() while the two-tower trains: in a second process, CPU threads
    split between the two, where a core is spare; in line, after training, where none is. Either way the same
    model: train_two_tower seeds itself, and work must not depend on it."""

    def trainer(examples, config, device="auto", progress=True):
        if (os.cpu_count() or 1) < 2 or multiprocessing.current_process().daemon:  # a daemon may not fork
            trained = train_two_tower(examples, config, device=device, progress=progress)
            work()
            return trained
        threads = torch.get_num_threads()
        # spawn: a fresh interpreter, no forked torch thread pool or Feast state
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            trained = pool.submit(train_two_tower_with_threads, max(1, threads // 2), examples, config, device)
            torch.set_num_threads(max(1, threads - threads // 2))
            try:
                work()
            finally:
                torch.set_num_threads(threads)
            try:
                return trained.result()
            except BrokenProcessPool:  # it could not start (a script without a __main__ guard) or died: train here
                return train_two_tower(examples, config, device=device, progress=progress)

    return trainer


def by_time(events: pd.DataFrame) -> pd.DataFrame:
    """Events oldest first (stable, so same-time events keep their order), indexed 0..n-1."""
    return events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


class TwoTowerRecommender:
    """Fit on train events + catalog, then score users against any items (the Recommender interface)."""

    def __init__(self, name="two_tower", preset_name="full", with_ranker=False, work_dir: Path | None = None,
                 device="auto", progress=True, two_tower: TwoTowerConfig | None = None,
                 ranker: RankerConfig | None = None, candidates: int | None = None, **overrides):  # fmt: skip
        """candidates: the ranker's candidate count per user (None: the ranker config's); **overrides: of the
        preset's two-tower config."""
        default_two_tower, default_ranker = preset(preset_name, **overrides)
        self.name, self.with_ranker, self.device, self.progress = name, with_ranker, device, progress
        self.config = two_tower or default_two_tower
        self.ranker_config = ranker or default_ranker
        if candidates is not None:
            self.ranker_config = replace(self.ranker_config, candidates=candidates)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="shoprec-fit-"))
        self.ranker = None

    def fit(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of=None) -> "TwoTowerRecommender":
        if not self.with_ranker:
            return self.fit_retrieval(train, catalog, as_of)
        windows = self.fit_with_windows(train, catalog, as_of)
        self.ranker = fit_ranker(windows, self.ranker_config, self.device, self.progress)
        return self

    def fit_retrieval(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of=None,
                      trainer=train_two_tower) -> "TwoTowerRecommender":  # fmt: skip
        """The two-tower on every train event, features from a store built from train alone, read from the
        snapshot at the midnight after as_of; the ranker's ages count from as_of itself (the retrieval's `now`)."""
        store, snapshot = self.feature_store(train, catalog, as_of)
        now = None if as_of is None else as_utc(as_of)
        self.retrieval = fit_retrieval(store, by_time(train), snapshot, self.config, self.device, self.progress, now,
                                       trainer)  # fmt: skip
        return self

    def fit_with_windows(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of=None) -> list["LabelWindow"]:
        """fit_retrieval, and the ranker's label_windows (returned). The two two-towers share nothing (each seeds
        itself), so the main one trains in a second process where a core is spare, while this one builds the
        windows and trains theirs (Online Retail, full preset: the main two-tower is two thirds of the fit)."""
        windows = []
        trainer = _training_meanwhile(lambda: windows.extend(self.label_windows(train, catalog)))
        self.fit_retrieval(train, catalog, as_of, trainer=trainer)
        return windows

    def feature_store(self, train: pd.DataFrame, catalog: pd.DataFrame, as_of=None):
        """(Feast store of train's features, as_of at midnight UTC); settles the config's "auto" choices."""
        self.settle_config(cutoff_given=as_of is not None)
        as_of = as_utc(as_of if as_of is not None else train["event_timestamp"].max()).ceil("D")
        store, _ = store_for_events(by_time(train), catalog, self.work_dir / "all", as_of,
                                    self.work_dir / EMBEDDING_CACHE)  # fmt: skip
        return store, as_of

    def settle_config(self, cutoff_given: bool) -> None:
        """Replace the config's "auto" choices: history "before" when fitted up to a cutoff time, else
        "all_but_target"; history dropout 0.5 with "all_but_target", 0 with "before"."""
        if self.config.history == "auto":
            self.config = replace(self.config, history="before" if cutoff_given else "all_but_target")
        if self.config.history_dropout < 0:
            self.config = replace(self.config, history_dropout=0.5 if self.config.history == "all_but_target" else 0.0)

    def fit_ranker(self, train: pd.DataFrame, catalog: pd.DataFrame) -> "TwoTowerRecommender":
        """The ranker on the label windows (see the module docstring); needs its own two-tower trained before them."""
        windows = self.label_windows(train, catalog)
        self.ranker = fit_ranker(windows, self.ranker_config, self.device, self.progress)
        self.with_ranker = True
        return self

    def label_windows(self, train: pd.DataFrame, catalog: pd.DataFrame) -> list["LabelWindow"]:
        """The ranker's label windows, newest first, each read through a store of the events before it; one
        two-tower, fitted on the events before the oldest, scores them all. The oldest window's store is built
        first, so that two-tower trains (in a second process where a core is spare) while the others are built."""
        cache = self.work_dir / EMBEDDING_CACHE
        splits = self._label_splits(by_time(train))
        bar = tqdm(total=len(splits), desc="label window stores", unit="window", disable=not self.progress)

        def store_of(number):
            earlier, _, cut = splits[number]
            store, _ = store_for_events(earlier, catalog, self.work_dir / f"before_labels_{number}", cut, cache)
            bar.update()
            return store

        oldest, (earlier, _, cut) = store_of(len(splits) - 1), splits[-1]
        newer = []  # (store, item-to-item weights) of each newer window, newest first

        def build_newer():
            newer.extend((store_of(number), ItemSimilarity.fit(splits[number][0])) for number in range(len(splits) - 1))

        trainer = _training_meanwhile(build_newer) if len(splits) > 1 else train_two_tower
        early = fit_retrieval(oldest, earlier, cut, self.config, self.device, self.progress, trainer=trainer)
        bar.close()
        # The newer windows read the same model through their own past: its features, its item-to-item weights.
        retrievals = [replace(early, store=store, as_of=cut, similarity=similarity)
                      for (store, similarity), (_, _, cut) in zip(newer, splits, strict=False)] + [early]  # fmt: skip
        return [LabelWindow(retrieval, np.sort(earlier["item_id"].unique()), labels)
                for retrieval, (earlier, labels, _) in zip(retrievals, splits, strict=True)]  # fmt: skip

    def plus_ranker(self, train: pd.DataFrame, catalog: pd.DataFrame, name: str,
                    candidates: int | None = None) -> "TwoTowerRecommender":  # fmt: skip
        """A copy sharing this fitted two-tower, with a ranker fitted on top (what fit() would give with_ranker)."""
        combined = copy.copy(self)
        combined.name = name
        if candidates is not None:
            combined.ranker_config = replace(self.ranker_config, candidates=candidates)
        return combined.fit_ranker(train, catalog)

    def _item_vectors(self, items: np.ndarray) -> np.ndarray:
        # Evaluation scores users in chunks against one item list: embed it once.
        key = hash(tuple(items))
        if getattr(self, "_items_key", None) != key:
            self._items_key, self._items = key, self.retrieval.items(items)
        return self._items

    def _label_splits(self, train: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]]:
        """(events before the window, the window's events, the window's start midnight) per label window, newest
        first. Windows start at midnights label_share of the events apart; one that would leave no past is dropped."""
        config, stamps = self.ranker_config, train["event_timestamp"]
        if self.config.history != "before":
            # No time order (msr-stratified): a random share of events labels, the rest are the past.
            pick = np.random.default_rng(config.seed).random(len(train)) < config.label_share
            return [(train[~pick], train[pick], pd.to_datetime(stamps, utc=True).max().ceil("D"))]
        positions = [int(len(train) * (1 - config.label_share * k)) for k in range(1, config.label_windows + 1)]
        cuts = {stamps.iloc[p].floor("D") for p in positions if p > 0}
        cuts = sorted((cut for cut in cuts if (stamps < cut).any()), reverse=True)
        if not cuts:
            raise ValueError("train has no event before the midnight that starts its label window: no past to "
                             "learn a ranker from")  # fmt: skip
        ends = [pd.Timestamp.max.tz_localize("UTC"), *cuts[:-1]]
        return [(train[stamps < cut], train[(stamps >= cut) & (stamps < end)], cut)
                for cut, end in zip(cuts, ends, strict=True)]  # fmt: skip

    def score(self, users, items, target: str = "all") -> np.ndarray:
        users, items = np.asarray(users, dtype=object), np.asarray(items, dtype=object)
        vectors = self._item_vectors(items)
        scores = self.retrieval.users(users) @ vectors.T
        if self.ranker is None:
            return scores.astype(np.float32)
        return self.ranker.rerank(self.retrieval, users, items, vectors, scores, target)


@dataclass
class LabelWindow:
    """Train events that label the ranker's candidates, and what finds those candidates: a two-tower read through
    the features of the events before the window, as of its start, over the items seen before it."""

    retrieval: Retrieval
    items: np.ndarray
    labels: pd.DataFrame
    _built: tuple = ()  # (candidate count, what candidates() gives for it): the largest count asked for so far

    def candidates(self, n: int) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """(users, candidate frame, RANKER_FEATURES) for the users this window saw: their n best retrieval
        candidates plus their own past items. Built once at the largest n asked for and cut down for a smaller
        one (tuning asks for several): the rows are the same (but for ties in retrieval score at the cut), as each
        row's features are its own and a past item stays whatever its rank."""
        if not self._built or self._built[0] < n:
            users = np.asarray(sorted(self.labels["user_id"].unique()), dtype=object)
            vectors = self.retrieval.items(self.items)
            scores = self.retrieval.users(users) @ vectors.T
            candidates, features = candidate_features(self.retrieval, users, self.items, vectors, scores, n)
            self._built = (n, users, candidates.frame(), features)
        built, users, frame, features = self._built
        if built == n:
            return users, frame, features
        keep = ((frame["retrieval_rank"] < n) | (features[:, RANKER_FEATURES.index("in_history")] > 0)).to_numpy()
        return users, frame[keep].reset_index(drop=True), features[keep]


@dataclass
class FittedRanker:
    model: Ranker
    mean: np.ndarray
    std: np.ndarray
    config: RankerConfig
    report: TrainReport

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.as_tensor((features - self.mean) / self.std, dtype=torch.float32)
            return torch.sigmoid(on_cpu(self.model)(x)).numpy()

    def rerank(self, retrieval: Retrieval, users, items, vectors, scores: np.ndarray, target: str) -> np.ndarray:
        """Candidates (top retrieval + own past items) get 10 + P(event); the rest keep retrieval order below.
        vectors are the items' two-tower vectors, scores the users' retrieval scores against them."""
        candidates, features = candidate_features(retrieval, users, items, vectors, scores, self.config.candidates)
        probabilities = self.probabilities(features)
        head = Ranker.TASKS.index("purchase" if target == "buy" else "interact")
        out = scores.astype(np.float32) - 100.0
        out[candidates.user, candidates.item] = 10.0 + probabilities[:, head]
        return out


def fit_ranker(windows: list[LabelWindow], config: RankerConfig, device="auto", progress=True):
    """Candidates of the users each label window saw, labelled by what they did in it; then multi-task BCE."""
    examples, mean, std = ranker_examples(windows, config, progress)
    model, report = train_ranker(examples, config, device=device, progress=progress)
    return FittedRanker(model.cpu(), mean, std, config, report)


def ranker_examples(windows: list[LabelWindow], config: RankerConfig, progress=False):
    """(RankerExamples standardised, feature means, feature stds): every label window's candidates and labels.

    The interact head learns from every user the window saw. The add_to_cart and purchase heads learn only from
    the users who carted (bought) something in it: they answer "which of these will the user buy", given that
    they buy, as the 'buy' target asks. Over every user, a purchase head would spend its few positives (Taobao:
    235 purchases against 13k events) telling buyers from browsers; this way it ranks better (Taobao 'buy'
    recall@20 0.222 -> 0.231, ranker retrained three times on the same candidates)."""
    if not any(len(window.labels) for window in windows):
        raise ValueError("the label windows hold no event: nothing to learn a ranker from")
    labelled = [window for window in windows if len(window.labels)]
    bar = tqdm(labelled, desc="ranker candidates", unit="window", disable=not progress)
    parts = [_window_examples(window, config) for window in bar]
    features, labels, known = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    mean, std = features.mean(0), features.std(0) + 1e-6
    return RankerExamples((features - mean) / std, labels, known), mean, std


def _window_examples(window: LabelWindow, config: RankerConfig):
    """(features, labels, known) of one label window's candidates."""
    labels = window.labels
    users, frame, features = window.candidates(config.candidates)
    user_position = pd.Series(np.arange(len(users)), index=pd.Index(users))
    labelled = labels.assign(user=user_position.reindex(labels["user_id"]).to_numpy()).dropna(subset=["user"])
    labelled["user"] = labelled["user"].astype(np.int64)
    present = set(labels["event_type"])
    label_columns, known_columns = [], []
    for task in Ranker.TASKS:
        kinds = {"interact": present, "add_to_cart": {"add_to_cart"}, "purchase": {"purchase"}}[task]
        taken = labelled[labelled["event_type"].isin(kinds)]
        hits = taken[["user", "item_id"]].drop_duplicates().assign(hit=1.0)
        hit = frame[["user", "item_id"]].merge(hits, on=["user", "item_id"], how="left")["hit"].fillna(0.0)
        label_columns.append(hit.to_numpy(np.float32))
        # Known for the users who did this kind of event in the window: every user for interact, none for a
        # kind the dataset lacks.
        known_columns.append(frame["user"].isin(taken["user"].unique()).to_numpy(np.float32))
    return features, np.stack(label_columns, 1), np.stack(known_columns, 1)
