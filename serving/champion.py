"""The champion as a serving worker holds it: the trained models over the online store, every catalog item's vector
and the ANN index over them, the catalog and recent popularity. Built off the request path and swapped as one
reference (serving/service.py), so a request runs start to end on one champion.

Parity with training is by construction: `OnlineRetrieval` is training's `Retrieval` with one method replaced,
`features`, which reads the online store instead of Feast's point-in-time join. The user tower, the candidate
building, the ranker features and the ranker are training's own code (training/pipeline.py), fed by online values.
"""

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.contract import EVENT_WEIGHTS, as_utc
from core.layout import Layout, read_json
from core.positions import Positions
from core.settings import Settings
from features.online import FRESH, MISSING, STALE, ItemRows, OnlineFeatures
from serving.index import build_index
from training import artefact
from training import publish as model_store
from training.candidates import ITEM_NUMBERS
from training.examples import RANKER_SERVICE, TWO_TOWER_SERVICE, numbers, zero_blanks
from training.models import remember_buckets
from training.pipeline import Retrieval, TwoTowerRecommender

SERVICES = (TWO_TOWER_SERVICE, RANKER_SERVICE)
STATUS_ORDER = {FRESH: 0, MISSING: 1, STALE: 2}  # the worst status of a view among the rows read wins
DAY_NS = 86_400 * 10**9


@dataclass
class OnlineRetrieval(Retrieval):
    """Training's Retrieval reading the online store: freshness judged at `scored_at`, every view's status kept.
    Columns come as numpy arrays (a request reads one user and a few dozen items: building frames would cost more
    than the features); the items' rows from `catalog`, read when the champion was loaded."""

    readers: dict = field(default_factory=dict, repr=False)  # service -> features.online.OnlineFeatures
    catalog: ItemRows | None = field(default=None, repr=False)  # ranker_v1 rows of every item the champion indexes
    catalog_position: Positions | None = field(default=None, repr=False)  # item id -> row of catalog
    statuses: dict = field(default_factory=dict, init=False, repr=False)  # view -> worst status read
    remembered_users: int = 0  # returning users remembered per champion (0: none)
    _memo: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)  # user -> {"row": their
    #                       stored row, (what, their views' statuses): value}, least recently used first
    _user_status: dict = field(default_factory=dict, init=False, repr=False)  # user -> their views' statuses
    _catalog_numbers: dict = field(default_factory=dict, init=False, repr=False)  # name -> the catalog's column as
    #                       number_columns gives it, for the freshness epoch of the judged columns under "judged"

    def at(self, now: pd.Timestamp) -> "OnlineRetrieval":
        """A copy for one request at the UTC moment now, reading the snapshot of now's midnight, with nothing
        read yet (dataclasses.replace costs more than the rest of the clock handling: a request makes one)."""
        request = object.__new__(type(self))  # copy.copy's result at a tenth of its cost (~30 us here)
        request.__dict__.update(self.__dict__)
        request.as_of = pd.Timestamp(now.value - now.value % DAY_NS, tz="UTC")  # now.floor("D"), cheaper
        request.now, request._joined, request.statuses, request._user_status = now, {}, {}, {}
        return request  # _memo stays shared: every request of this champion adds to the same one

    def users(self, user_ids) -> np.ndarray:
        """Training's user tower, remembered for a returning user (see `remembered`): the same shopper on the
        next page skips the tower (~0.5 ms of a ~3.5 ms request on the 2-core machine)."""
        ids = np.asarray(user_ids, dtype=object)
        if len(ids) != 1:
            return super().users(ids)
        return self.remembered(ids[0], "vector", lambda: Retrieval.users(self, ids))

    def remembered(self, user_id: str, what: str, compute):
        """compute()'s value, remembered for the user while their views' freshness stays the same: for a value
        that is a function of the champion and the user's stored row (their vector, their shortlist). Arrays are
        made read-only, as every later request of the user shares them."""
        if not self.remembered_users:
            return compute()
        self._users(np.asarray([user_id], dtype=object))  # judges the row's freshness (once per request)
        entry, key = self._entry(user_id), (what, self._user_status[user_id])
        if key not in entry:
            entry[key] = _read_only(compute())
        return entry[key]

    def _entry(self, user_id: str) -> dict:
        """What is remembered of the user, for the champion's life: their stored row changes only when features
        are materialised, and a materialisation loads a new champion with an empty memo. The remembered_users
        most recently seen are kept."""
        entry = self._memo.get(user_id)
        if entry is None:
            entry = self._memo[user_id] = {}
            if len(self._memo) > self.remembered_users:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(user_id)
        return entry

    def _user_row(self, user_id: str):
        """The user's stored row (features.online.UserRow), read from the store once per champion for a
        remembered user: their later requests read nothing (~0.3 ms of a returning user's ~1.5 ms in process).
        Should the store fail meanwhile, a remembered user still gets the answer the store's row gives. An id
        the store does not know is read again each time rather than remembered: made-up ids must not push real
        users out of the memo."""
        entry = self._memo.get(user_id)
        if entry is not None and "row" in entry:
            self._memo.move_to_end(user_id)
            return entry["row"]
        row = self.readers[RANKER_SERVICE].user_row(user_id)
        if self.remembered_users and row.known:
            self._entry(user_id)["row"] = row
        return row

    def columns(self, service: str, key: str, ids) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, dtype=object)
        if key == "user_id":
            return self._users(ids)
        if (rows := self._catalog_rows(service, ids)) is not None:
            values, status = self.catalog.at(self.scored_at, rows)
            self._note(status)
            return values
        values, status = self.readers[service].read_items(list(ids), self.scored_at)
        self._note(status)
        return values

    def number_columns(self, service: str, key: str, ids, names) -> dict[str, np.ndarray]:
        """Items' numeric ranker columns picked out of the whole catalog's, converted (float64, blanks 0) once
        per freshness epoch rather than per request: ~0.15 ms of a returning user's ~1.5 ms in process."""
        if key == "item_id" and (rows := self._catalog_rows(service, ids)) is not None:
            columns, worst = self._numbers_of(rows, names)
            for view, status in worst.items():
                self._worst(view, status)
            return columns
        return super().number_columns(service, key, ids, names)

    def remembered_item_numbers(self, user_id: str, short) -> dict[str, np.ndarray]:
        """short.item_numbers(self) for the user's remembered shortlist, kept with it for the catalog's freshness
        epoch (no item row's status changes within it): their request then picks nothing out of the 55k-row
        catalog columns, whose scattered rows are cold in a worker's caches between requests. The items' views'
        statuses are noted as the read notes them."""
        if not self.remembered_users or self.catalog is None:
            return short.item_numbers(self)
        epoch, entry = self.catalog.epoch(self.scored_at), self._entry(user_id)
        kept = entry.get("item numbers")  # (shortlist, epoch, columns, the worst status per item view)
        if kept is None or kept[0] is not short or kept[1] != epoch:
            rows = self._catalog_rows(RANKER_SERVICE, short.items)
            if rows is None:  # an item the loaded catalog lacks: read from the store on every request
                return short.item_numbers(self)
            columns, worst = self._numbers_of(rows, ITEM_NUMBERS)
            kept = entry["item numbers"] = (short, epoch, {n: _read_only(c) for n, c in columns.items()}, worst)
        for view, status in kept[3].items():
            self._worst(view, status)
        return kept[2]

    def _numbers_of(self, rows: np.ndarray, names) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """(the catalog rows' numeric columns, each item view's worst status among them) at scored_at."""
        judged, status = self.catalog.at(self.scored_at)  # the epoch's columns, kept by ItemRows
        worst = {view: _worst(found[rows]) for view, found in status.items()}
        return {name: self._converted(name, judged)[rows] for name in names}, worst

    def _catalog_rows(self, service: str, ids) -> np.ndarray | None:
        """The ids' rows of the catalog loaded with the champion, or None where it cannot answer (another
        service's views, or an id it lacks: read from the store then)."""
        if service != RANKER_SERVICE or self.catalog is None:
            return None
        rows = self.catalog_position.of(np.asarray(ids, dtype=object))
        return rows if (rows >= 0).all() else None

    def _converted(self, name: str, judged: dict) -> np.ndarray:
        """The catalog's column name as number_columns gives it, converted once per epoch's judged columns."""
        cache = self._catalog_numbers  # shared by the champion's requests, as the memo is
        if cache.get("judged") is not judged:  # held, so a new epoch's columns never share its id
            cache.clear()
            cache["judged"] = judged
        if name not in cache:
            cache[name] = zero_blanks(numbers(judged[name]))
        return cache[name]

    def features(self, service: str, key: str, ids) -> pd.DataFrame:
        """The columns as a frame, as the offline join gives them (item_table reads it): a vector per row."""
        columns = self.columns(service, key, ids)
        return pd.DataFrame({name: list(column) if column.ndim > 1 else column for name, column in columns.items()},
                            index=pd.Index(np.asarray(ids, dtype=object), name=key))  # fmt: skip

    def _users(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """ranker_v1's user views hold every user feature two_tower_v1 reads: one read serves both towers and
        the ranker. A request reads one user; evaluation-sized batches never come here."""
        rows = []
        for user_id in ids:
            values = self._joined.get(user_id)
            if values is None:
                values, status = self._user_row(user_id).at(self.scored_at)
                for view, found in status.items():
                    self._worst(view, found)
                self._joined[user_id], self._user_status[user_id] = values, tuple(sorted(status.items()))
            rows.append(values)
        return rows[0] if len(rows) == 1 else {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}

    def _note(self, status: dict) -> None:
        for view, found in status.items():
            self._worst(view, _worst(found))

    def _worst(self, view: str, status: str) -> None:
        if STATUS_ORDER[status] >= STATUS_ORDER[self.statuses.get(view, FRESH)]:
            self.statuses[view] = status


@dataclass
class Champion:
    """Everything one request reads, fixed for the champion's life (a new one is built for a new materialisation)."""

    tag: str
    recommender: TwoTowerRecommender
    retrieval: OnlineRetrieval  # the template a request copies with its own clock
    item_ids: np.ndarray  # object [N]: index row -> item id (the catalog, then trained items it lacks)
    vectors: np.ndarray  # float32 [N, dim]
    index: object  # faiss, over vectors
    position: Positions  # item id -> index row
    in_catalog: np.ndarray  # bool [N]: only catalog items are ever recommended
    from_text: np.ndarray  # bool [N]: not seen in training: its vector comes from text, category and price
    popularity: np.ndarray  # float [N]: recent intent-weighted events (item_popularity), 0 where not fresh
    popularity_fresh: bool  # whether any item had fresh popularity at load
    by_popularity: np.ndarray  # int [N]: index rows, most popular first (ties in row order), for the cold start
    materialisation: object  # the online store version the item rows were read at
    loaded_at: float  # seconds it took to build
    exact: bool  # exact scan (parity with offline scoring) or HNSW

    def at(self, now: pd.Timestamp) -> OnlineRetrieval:
        """A per-request retrieval judging freshness and counting ages at now. The newest online rows are the
        snapshot stamped at now's midnight (a day's row is materialised once the day is over), so ages in them
        count from there: training's `ahead` correction then adds the hours since."""
        return self.retrieval.at(as_utc(now))


def load_champion(settings: Settings, store, now: pd.Timestamp, readers: dict | None = None) -> Champion | None:
    """The current champion of the model store over `store`'s online features, or None before the first one.
    now: the clock moment item rows are judged at (popularity, new items' text). readers: the online readers
    to reuse (their item cache survives a swap when the materialisation did not change)."""
    started = time.perf_counter()
    tag = model_store.champion(settings)
    if tag is None:
        return None
    layout = Layout(settings.home)
    readers = readers or {service: OnlineFeatures(store, service, layout) for service in SERVICES}
    directory = model_store.champion_path(settings)
    recommender = artefact.load(directory, store)
    trained = recommender.retrieval
    now = as_utc(now)
    template = OnlineRetrieval(trained.model, store, now.floor("D"), trained.trained_ids, trained.report,
                               trained.similarity, now, readers=readers,
                               remembered_users=settings.serving_remembered_users)  # fmt: skip
    recommender.retrieval = template
    catalog = _catalog_ids(layout, directory)
    item_ids = pd.Index(catalog).union(pd.Index(trained.trained_ids), sort=False).to_numpy(object)
    # Every item's vector from its online catalog row, as offline scoring embeds them from the offline one.
    vectors = np.ascontiguousarray(template.items(item_ids), dtype=np.float32)
    index = build_index(vectors)
    remember_buckets(item_ids, trained.model.config.id_buckets)  # the ids a user tower's history hashes
    position = Positions(item_ids).for_requests()
    # The ranker's item rows of the whole catalog, read now: no request pays a cold read.
    template.catalog, template.catalog_position = readers[RANKER_SERVICE].item_rows(list(item_ids)), position
    popularity, popular_fresh = _popularity(template.catalog, now)
    return Champion(
        tag=tag,
        recommender=recommender,
        retrieval=template,
        item_ids=item_ids,
        vectors=vectors,
        index=index,
        position=position,
        in_catalog=_read_only(position.index.isin(catalog)),  # requests share it (serving.recommend._allowed)
        from_text=~position.index.isin(pd.Index(trained.trained_ids)),
        popularity=popularity,
        popularity_fresh=popular_fresh,
        by_popularity=np.argsort(-popularity, kind="stable"),
        materialisation=readers[RANKER_SERVICE].cache_version,
        loaded_at=time.perf_counter() - started,
        exact=type(index).__name__ == "IndexFlatIP",
    )


def _catalog_ids(layout: Layout, directory: Path) -> np.ndarray:
    """The shop's catalog (the gate's catalog file); without one, the items the champion knows."""
    if layout.catalog.exists():
        return pd.read_parquet(layout.catalog, columns=["item_id"])["item_id"].astype(str).unique()
    return np.asarray(read_json(directory / "artefact.json")["trained_item_ids"], dtype=object)


def _popularity(catalog: ItemRows, now: pd.Timestamp) -> tuple[np.ndarray, bool]:
    """Recent intent-weighted events per item from item_popularity (views 1, carts 3, purchases 4, as repurchase
    weighs them), judged now. Stale rows count 0: where none is fresh (a replayed shop judged at the wall clock)
    the fallback says so."""
    values, status = catalog.at(now)
    fresh = status.get("item_popularity", np.array([], dtype=object)) == FRESH

    def column(name):
        return np.nan_to_num(values[f"item_popularity__{name}"].astype(np.float64))

    score = (EVENT_WEIGHTS["view"] * column("views_7d") + EVENT_WEIGHTS["add_to_cart"] * column("add_to_carts_7d")
             + EVENT_WEIGHTS["purchase"] * column("purchases_30d"))  # fmt: skip
    return score, bool(fresh.any())


def _worst(statuses: np.ndarray) -> str:
    """The worst of some rows' statuses (fresh where there are none)."""
    # a set of the few distinct statuses: comparing the object array to each costs more per request
    return max(set(statuses.tolist()), key=STATUS_ORDER.__getitem__, default=FRESH)


def _read_only(value):
    """value with its numpy arrays (in tuples and dataclasses too) made read-only."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, tuple):
        for part in value:
            _read_only(part)
    elif dataclasses.is_dataclass(value):
        for part in dataclasses.fields(value):
            _read_only(getattr(value, part.name))
    return value
