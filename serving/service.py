"""The recommendation service: `bentoml serve serving.service:Recommender` (or `shoprec serve`).

POST /recommend and /similar_items answer from the champion in BentoML's model store over Feast's online store
(serving/recommend.py). Each worker loads the champion in __init__ and then polls, every SHOPREC_SWAP_POLL_S, for
a new champion (retrain_models published one, or `shoprec rollback` moved the pointer) or a new materialisation
(new items, fresh rows): it builds the new one off the request path and swaps one reference, so requests in
flight finish on the old one and later ones name the new model_version. /readyz, the API key and the body limit
sit in serving/guard.py; /metrics adds shoprec_* series to BentoML's own.
"""

import logging
import threading
import uuid
import warnings
from collections import Counter
from typing import Annotated

import bentoml
from pydantic import BaseModel, Field

from core.settings import get_settings
from serving.guard import Guard
from serving.schemas import (
    MAX_K,
    MAX_LISTED,
    FeatureStatus,
    ItemId,
    Recommendations,
    RecommendedItem,
    SimilarItems,
    UserId,
)

logger = logging.getLogger("shoprec.serving")


class RecommendRequest(BaseModel):
    user_id: UserId = Field("12748", description="The shop's pseudonymous user id.")
    k: Annotated[int, Field(ge=1, le=MAX_K)] = Field(10, description="How many items to return.")
    exclude: Annotated[list[ItemId], Field(max_length=MAX_LISTED)] = Field(
        [], description="Items never to return (ids the model does not know are ignored)."
    )
    session_items: Annotated[list[ItemId], Field(max_length=MAX_LISTED)] = Field(
        [], description="Items of the current session: the context for a user without fresh features."
    )
    exclude_purchased: bool = Field(False, description="Leave out items the user has already bought.")


class SimilarRequest(BaseModel):
    item_id: ItemId = Field("23084", description="An item of the catalog (new ones too).")
    k: Annotated[int, Field(ge=1, le=MAX_K)] = Field(10, description="How many items to return.")


class Holder:
    """The champion one worker serves, kept current by a polling thread; readers see one reference at a time."""

    def __init__(self):
        from features.store import open_store

        self.store = open_store(get_settings())
        self.champion, self.problem, self._loaded_key = None, "loading", None
        self.store_problem: str | None = None  # the online store failed a read: not ready until it answers again
        self._shop_time = None
        self.refresh()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="champion-swap", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling, waiting for a poll in flight: a poller left running after its service (an in-process
        test's) kept reading the process's settings, and could cache them half-changed for the next service."""
        self._stop.set()
        self._poller.join(timeout=30)

    def now(self):
        """The clock freshness is judged at: the wall clock, or the shop's logical time (see core.settings), as
        the poller last read it (reading it is a scan of the ledger: not a cost for every request)."""
        import pandas as pd

        if get_settings().serving_clock == "shop" and self._shop_time is not None:
            return self._shop_time
        return pd.Timestamp.now(tz="UTC")

    def refresh(self) -> None:
        """Load the champion again when its tag or the online store's materialisation changed."""
        from core.layout import Layout, lake_as_of
        from features.store import materialized_version
        from serving.champion import load_champion
        from training import publish as model_store

        layout = Layout(get_settings().home)
        if get_settings().serving_clock == "shop":
            self._shop_time = lake_as_of(layout)
        key = (model_store.champion(get_settings()), materialized_version(layout))
        if key == self._loaded_key:
            return
        try:
            readers = self.champion.retrieval.readers if self.champion is not None else None
            champion = load_champion(get_settings(), self.store, self.now(), readers)
        except Exception as error:  # a broken artefact must not take the serving one down with it
            logger.exception("could not load champion %s", key[0])
            self.problem = f"champion {key[0]} could not be loaded: {error}"
            self._loaded_key = key
            return
        self.champion, self._loaded_key = champion, key  # the swap: one reference
        self.problem = None if champion is not None else "no champion in the model store yet: run retrain_models"
        if champion is not None:
            logger.info("serving %s (%d items, loaded in %.1f s)", champion.tag, len(champion.item_ids),
                        champion.loaded_at)  # fmt: skip

    def store_read(self, problem: str | None) -> None:
        """A request's read of the online store failed (problem) or succeeded (None)."""
        if problem and not self.store_problem:
            logger.warning("%s: answering the cold-start fallback until it answers again", problem)
        elif not problem and self.store_problem:
            logger.info("the online store answers again")
        self.store_problem = problem

    def _probe_store(self) -> None:
        """While the store is failing, one read per poll: the service recovers without waiting for traffic."""
        from features.online import STORE_ERRORS

        champion = self.champion
        if champion is None:
            return
        try:
            champion.retrieval.readers["ranker_v1"].read_user("shoprec-store-probe", self.now())
        except STORE_ERRORS as error:
            self.store_read(f"online store unavailable ({type(error).__name__}: {error})")
        else:
            self.store_read(None)

    def _poll(self) -> None:
        while not self._stop.wait(get_settings().swap_poll_s):
            try:
                if self.store_problem:
                    self._probe_store()
                self.refresh()
            except Exception:  # keep polling: the next look may succeed (a store being rewritten, say)
                logger.exception("champion poll failed")


HOLDER: Holder | None = None  # this worker's, for the guard's /readyz


def readiness() -> tuple[bool, dict]:
    """/readyz: ready with a champion and an online store that answers. With the store failing, requests still
    get the stated fallback, but an orchestrator should send them to a replica that can personalise."""
    champion = HOLDER.champion if HOLDER is not None else None
    problem = (HOLDER.problem if HOLDER else "starting") if champion is None else HOLDER.store_problem
    body = {"ready": problem is None, "model_version": champion.tag if champion else None,
            "clock": get_settings().serving_clock, "as_of": str(HOLDER.now()) if HOLDER else None,
            "reason": problem}  # fmt: skip
    return problem is None, body


def unservable() -> str | None:
    """Why the API cannot answer at all (no champion yet), checked on every request: None when it can."""
    if HOLDER is not None and HOLDER.champion is not None:
        return None
    return HOLDER.problem if HOLDER else "starting"


API_PATHS = ("/recommend", "/similar_items")


def http_config(settings) -> dict:
    """BentoML's per-request machinery as the settings ask: the service and bench's reference services share it,
    so the benchmark compares like with like. A request timeout always; the access log and the tracing
    middleware only when asked for (each cost ~0.3 ms of a ~2 ms echo on the 2-core machine)."""
    config = {"traffic": {"timeout": 10}}
    if not settings.serving_access_log:
        config["logging"] = {"access": {"enabled": False}}
    if not settings.serving_tracing:
        config["tracing"] = {"excluded_urls": list(API_PATHS)}
    return config


@bentoml.service(
    name="shoprec_recommender",
    workers=get_settings().serving_workers,  # fixed when the class is declared: `shoprec serve` sets them
    threads=get_settings().serving_threads,
    **http_config(get_settings()),
)
class Recommender:
    """Real-time recommendations from the champion over Feast's online store.

    The endpoints are async and compute in the event loop: a request is ~4 ms of CPU holding the GIL, so request
    threads only add hand-offs and GIL convoys (bench.serving, 2 workers, Online Retail: 350 req/s saturated and
    p99 11 ms at 100 req/s, against 167 req/s / 12 ms with a sync endpoint on one thread and 123 req/s / 17 ms on
    four). Scale with workers, one per core. The online store's calls are bounded by SHOPREC_REDIS_TIMEOUT_S.
    """

    def __init__(self):
        import torch

        global HOLDER
        torch.set_num_threads(1)  # one request per thread; BLAS threads would only fight each other
        HOLDER = self.holder = Holder()
        self.metrics = _Metrics.once()
        quiet_request_warnings()
        remember_api_methods(self)

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        self.holder.close()

    @bentoml.api(input_spec=RecommendRequest)
    async def recommend(self, user_id: str, k: int, exclude: list[str], session_items: list[str],
                  exclude_purchased: bool) -> Recommendations:  # fmt: skip
        """The top k items for a user: retrieved by the two-tower, reordered by the ranker, filtered."""
        from serving.recommend import recommend

        champion = self._champion()
        now = self.holder.now()
        answer = recommend(champion, user_id, k, exclude, session_items, exclude_purchased, now)
        if answer.store_error:  # it answers again when the poller's probe says so: a remembered user's request
            self.holder.store_read(answer.store_error)  # reads nothing, so its success says nothing of the store
        self.metrics.record(champion.tag, answer)
        return Recommendations(
            items=[RecommendedItem(item_id=i, score=s, reason=r) for i, s, r in answer.items],
            model_version=champion.tag,
            request_id=uuid.uuid4().hex,
            feature_status=_status(answer.statuses, now),
            fallback=answer.fallback,
        )

    @bentoml.api(input_spec=SimilarRequest)
    async def similar_items(self, item_id: str, k: int) -> SimilarItems:
        """Items whose vectors are closest to an item's; new catalog items are embedded from their text."""
        from serving.recommend import UnknownItem, similar_items

        champion = self._champion()
        try:
            found, from_text = similar_items(champion, item_id, k)
        except UnknownItem as error:
            raise bentoml.exceptions.NotFound(str(error)) from None
        return SimilarItems(item_id=item_id, items=[RecommendedItem(item_id=i, score=s, reason=r) for i, s, r in found],
                            model_version=champion.tag, request_id=uuid.uuid4().hex, embedded_from_text=from_text)  # fmt: skip

    def _champion(self):
        champion = self.holder.champion
        if champion is None:
            raise bentoml.exceptions.ServiceUnavailable(self.holder.problem or "no champion loaded yet")
        return champion


def remember_api_methods(service) -> None:
    """Look each API method up once. BentoML finds the method per request through its descriptor, which builds a
    new wrapper each time (inspect.signature and functools.wraps: ~3% of a worker's time under load here); the
    descriptor has no __set__, so the instance's own attribute, the same wrapper made once, answers instead."""
    for name in API_PATHS:
        setattr(service, name.lstrip("/"), getattr(service, name.lstrip("/")))


def quiet_request_warnings() -> None:
    """Silence the deprecation BentoML's request handling raises on every request (it reads model_fields off the
    request's pydantic instance). Feast, imported by the Holder, turns DeprecationWarnings to 'once', yet it was
    printed per request (any filter change resets the 'once' registry): a line and a source lookup each time,
    31,177 in one 5-minute benchmark log. Called after Feast's import, so this filter comes first."""
    warnings.filterwarnings("ignore", message="Accessing the 'model_fields' attribute on the instance",
                            category=DeprecationWarning)  # fmt: skip


def _status(statuses: dict, now) -> FeatureStatus:
    return FeatureStatus(clock="shop" if get_settings().serving_clock == "shop" else "wall", as_of=str(now),
                         views=statuses, stale=sorted(v for v, s in statuses.items() if s == "stale"))  # fmt: skip


class _Metrics:
    """shoprec_* Prometheus series beside BentoML's own. Under `bentoml serve` every worker writes to the
    multiprocess directory BentoML sets up, and /metrics reads them all; the version gauge keeps a series per
    live worker (its pid), so a half-swapped service shows both versions."""

    _made = None

    @classmethod
    def once(cls) -> "_Metrics":
        """The process's series: Prometheus refuses a second registration of a name."""
        cls._made = cls._made or cls()
        return cls._made

    def __init__(self):
        from prometheus_client import Counter, Gauge

        self.requests = Counter("shoprec_recommendations", "Items recommended, by reason.", ["reason"])
        self.cold = Counter("shoprec_cold_start_requests", "Requests answered by a fallback (unknown or cold user).")
        self.stale = Counter("shoprec_stale_feature_requests", "Requests that read at least one stale view.")
        self.version = Gauge("shoprec_model_info", "1 for the model version this worker serves.", ["model_version"],
                             multiprocess_mode="liveall")  # fmt: skip
        self._tag = None

    def record(self, tag: str, answer) -> None:
        for reason, count in Counter(reason for _, _, reason in answer.items).items():  # a file write per inc
            self.requests.labels(reason=reason).inc(count)
        if answer.fallback:
            self.cold.inc()
        if "stale" in answer.statuses.values():
            self.stale.inc()
        if tag != self._tag:
            if self._tag is not None:
                self.version.labels(model_version=self._tag).set(0)
            self.version.labels(model_version=tag).set(1)
            self._tag = tag


Recommender.add_asgi_middleware(Guard, status=readiness, settings=get_settings, unservable=unservable,
                                api_paths=API_PATHS)  # fmt: skip
