"""The champion as a serving worker holds it: the trained models over the online store, every catalog item's vector
and the ANN index over them, the catalog and recent popularity. Built off the request path and swapped as one
reference (serving/service.py), so a request runs start to end on one champion.

Parity with training is by construction: `OnlineRetrieval` is training's `Retrieval` with one method replaced,
`features`, which reads the online store instead of Feast's point-in-time join. The user tower, the candidate
building, the ranker features and the ranker are training's own code (training/pipeline.py), fed by online values.
"""

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.contract import EVENT_WEIGHTS, as_utc
from core.layout import Layout, read_json
from core.settings import Settings
from features.online import FRESH, MISSING, STALE, OnlineFeatures
from serving.index import build_index
from training import artefact
from training import publish as model_store
from training.examples import RANKER_SERVICE, TWO_TOWER_SERVICE
from training.pipeline import Retrieval, TwoTowerRecommender

SERVICES = (TWO_TOWER_SERVICE, RANKER_SERVICE)
STATUS_ORDER = {FRESH: 0, MISSING: 1, STALE: 2}  # the worst status of a view among the rows read wins


@dataclass
class OnlineRetrieval(Retrieval):
    """Training's Retrieval reading the online store: freshness judged at `scored_at`, every view's status kept."""

    readers: dict = field(default_factory=dict, repr=False)  # service -> features.online.OnlineFeatures
    statuses: dict = field(default_factory=dict, init=False, repr=False)  # view -> worst status read

    def features(self, service: str, key: str, ids) -> pd.DataFrame:
        ids = pd.Index(np.asarray(ids, dtype=object))
        if key == "user_id":
            # ranker_v1's user views hold every user feature two_tower_v1 reads: one read serves both towers.
            service = RANKER_SERVICE
        cached = self._joined.get((service, key))
        missing = ids.unique() if cached is None else ids.unique().difference(cached.index, sort=False)
        if len(missing):
            fresh = self._read(service, key, missing.to_list())
            cached = fresh if cached is None else pd.concat([cached, fresh])
            self._joined[(service, key)] = cached
        return cached.reindex(ids)

    def _read(self, service: str, key: str, ids: list) -> pd.DataFrame:
        reader, now = self.readers[service], self.scored_at
        if key == "user_id":
            rows = []
            for user_id in ids:  # a request reads one user; evaluation-sized batches never come here
                values, status = reader.read_user(user_id, now)
                self._note({view: np.array([s]) for view, s in status.items()})
                rows.append({name: _plain(column[0]) for name, column in values.items()})
            return pd.DataFrame(rows, index=pd.Index(ids, name=key))
        values, status = reader.read_items(ids, now)
        self._note(status)
        return pd.DataFrame({name: list(column) if column.ndim > 1 else column for name, column in values.items()},
                            index=pd.Index(ids, name=key))  # fmt: skip

    def _note(self, status: dict) -> None:
        for view, found in status.items():
            worst = max(found, key=STATUS_ORDER.get, default=FRESH)
            if STATUS_ORDER[worst] >= STATUS_ORDER[self.statuses.get(view, FRESH)]:
                self.statuses[view] = str(worst)


@dataclass
class Champion:
    """Everything one request reads, fixed for the champion's life (a new one is built for a new materialisation)."""

    tag: str
    recommender: TwoTowerRecommender
    retrieval: OnlineRetrieval  # the template a request copies with its own clock
    item_ids: np.ndarray  # object [N]: index row -> item id (the catalog, then trained items it lacks)
    vectors: np.ndarray  # float32 [N, dim]
    index: object  # faiss, over vectors
    position: pd.Index  # item id -> index row
    in_catalog: np.ndarray  # bool [N]: only catalog items are ever recommended
    from_text: np.ndarray  # bool [N]: not seen in training: its vector comes from text, category and price
    popularity: np.ndarray  # float [N]: recent intent-weighted events (item_popularity), 0 where not fresh
    popularity_fresh: bool  # whether any item had fresh popularity at load
    materialisation: object  # the online store version the item rows were read at
    loaded_at: float  # seconds it took to build
    exact: bool  # exact scan (parity with offline scoring) or HNSW

    def at(self, now: pd.Timestamp) -> OnlineRetrieval:
        """A per-request retrieval judging freshness and counting ages at now. The newest online rows are the
        snapshot stamped at now's midnight (a day's row is materialised once the day is over), so ages in them
        count from there: training's `ahead` correction then adds the hours since."""
        now = as_utc(now)
        return replace(self.retrieval, as_of=now.floor("D"), now=now)


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
                               trained.similarity, now, readers=readers)  # fmt: skip
    recommender.retrieval = template
    catalog = _catalog_ids(layout, directory)
    item_ids = pd.Index(catalog).union(pd.Index(trained.trained_ids), sort=False).to_numpy(object)
    # Every item's vector from its online catalog row, as offline scoring embeds them from the offline one.
    vectors = np.ascontiguousarray(template.items(item_ids), dtype=np.float32)
    index = build_index(vectors)
    popularity, popular_fresh = _popularity(readers[RANKER_SERVICE], item_ids, now)
    position = pd.Index(item_ids)
    return Champion(
        tag=tag,
        recommender=recommender,
        retrieval=template,
        item_ids=item_ids,
        vectors=vectors,
        index=index,
        position=position,
        in_catalog=position.isin(catalog),
        from_text=~position.isin(pd.Index(trained.trained_ids)),
        popularity=popularity,
        popularity_fresh=popular_fresh,
        materialisation=readers[RANKER_SERVICE].cache_version,
        loaded_at=time.perf_counter() - started,
        exact=type(index).__name__ == "IndexFlatIP",
    )


def _catalog_ids(layout: Layout, directory: Path) -> np.ndarray:
    """The shop's catalog (the gate's catalog file); without one, the items the champion knows."""
    if layout.catalog.exists():
        return pd.read_parquet(layout.catalog, columns=["item_id"])["item_id"].astype(str).unique()
    return np.asarray(read_json(directory / "artefact.json")["trained_item_ids"], dtype=object)


def _popularity(reader: OnlineFeatures, item_ids: np.ndarray, now: pd.Timestamp) -> tuple[np.ndarray, bool]:
    """Recent intent-weighted events per item from item_popularity (views 1, carts 3, purchases 4, as repurchase
    weighs them), read now (which also warms the item cache: no request pays a cold read). Stale rows count 0:
    where none is fresh (a replayed shop judged at the wall clock) the fallback says so."""
    values, status = reader.read_items(list(item_ids), now)
    fresh = status.get("item_popularity", np.array([], dtype=object)) == FRESH

    def column(name):
        return np.nan_to_num(values[f"item_popularity__{name}"].astype(np.float64))

    score = (EVENT_WEIGHTS["view"] * column("views_7d") + EVENT_WEIGHTS["add_to_cart"] * column("add_to_carts_7d")
             + EVENT_WEIGHTS["purchase"] * column("purchases_30d"))  # fmt: skip
    return score, bool(fresh.any())


def _plain(value):
    """An online list value as the offline join gives it: None for an empty one (a blanked or missing row)."""
    if isinstance(value, np.ndarray):
        return value if value.size else None
    return value
