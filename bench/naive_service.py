"""The naive reference service of bench/serving.py: `bentoml serve bench.naive_service:NaiveRecommender`.

The same champion, the same models and the same request path (serving/recommend.py) as serving.service, but every
feature a request needs, the user's rows and the candidates' item rows, comes from Feast's Python SDK per request:
`store.get_online_features(features=store.get_feature_service(...), entity_rows=..., full_feature_names=True)`,
with no item cache. It is what a first version reading "features from Feast" would do, and the yardstick the
service's saturated throughput is compared with (issue 16: >= 5x). Only the champion's build (item vectors, index,
popularity) uses serving's own read path, once, before the first request.

Feast does not enforce a view's TTL on online reads (feast-dev/feast#6821): here a row that exists is fresh and
only a missing one is missing, so a user the real service would call stale is scored here as fresh.
"""

import uuid
from dataclasses import dataclass, field, fields, replace

import bentoml
import numpy as np
import pandas as pd

from core.settings import get_settings
from features.online import _columns, _kind
from serving.champion import OnlineRetrieval
from serving.schemas import FeatureStatus, Recommendations, RecommendedItem
from serving.service import RecommendRequest, http_config, quiet_request_warnings
from training.examples import RANKER_SERVICE
from training.pipeline import Retrieval

MISSING, FRESH = "missing", "fresh"


@dataclass
class NaiveRetrieval(OnlineRetrieval):
    """OnlineRetrieval with every read through Feast's get_online_features, the feature service fetched per call:
    the user's row once per request (as the service reads it), the candidates' item rows on every call."""

    views: dict = field(default_factory=dict, repr=False)  # service -> key -> [(view, [(feature, kind)])]

    def columns(self, service: str, key: str, ids) -> dict[str, np.ndarray]:
        ids = [str(i) for i in np.asarray(ids, dtype=object)]
        if key != "user_id":
            return self._read(service, key, ids)
        # ranker_v1's user views hold every user feature two_tower_v1 reads, as OnlineRetrieval reads them
        if len(ids) == 1 and ids[0] in self._joined:
            return self._joined[ids[0]]
        values = self._read(RANKER_SERVICE, key, ids)
        if len(ids) == 1:
            self._joined[ids[0]] = values
        return values

    def number_columns(self, service: str, key: str, ids, names) -> dict[str, np.ndarray]:
        """Converted from this request's read, as training converts them: not the service's catalog columns."""
        return Retrieval.number_columns(self, service, key, ids, names)

    def _read(self, service: str, key: str, ids: list[str]) -> dict[str, np.ndarray]:
        """The columns of ids as features.online gives them (numbers float32 with NaN, vectors stacked, lists and
        text as objects), each view's status per id."""
        wanted = self.store.get_feature_service(service)  # per call, as a naive caller does
        views = self.views[service][key]
        names = {p.name for p in wanted.feature_view_projections}
        refs = [f"{view}:{name}" for view, columns in views if view in names for name, _ in columns]
        found = self.store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids],
                                               full_feature_names=True).to_dict()  # fmt: skip
        out, status = {}, {}
        for view, columns in views:
            if view not in names:
                continue
            names_of, kinds = [name for name, _ in columns], [kind for _, kind in columns]
            rows = list(zip(*(found[f"{view}__{name}"] for name in names_of), strict=True))
            out.update(_columns(view, names_of, kinds, rows))  # as features.online builds them
            present = np.array([any(v is not None for v in row) for row in rows], dtype=bool)
            status[view] = np.where(present, FRESH, MISSING).astype(object)
        self._note(status)
        return out


def naive_champion(settings, store, now):
    """serving's champion with its retrieval (and the recommender's) replaced by a NaiveRetrieval."""
    from serving.champion import SERVICES, load_champion

    champion = load_champion(settings, store, now)
    if champion is None:
        raise RuntimeError("no champion in the model store: build the shop first (python -m bench.serving)")
    views = {}
    for service in SERVICES:
        views[service] = {"user_id": [], "item_id": []}
        for projection in store.get_feature_service(service).feature_view_projections:
            view = store.get_feature_view(projection.name)
            columns = [(f.name, _kind(f.dtype)) for f in projection.features]
            views[service][view.entity_columns[0].name].append((projection.name, columns))
    template = champion.retrieval
    kept = {f.name: getattr(template, f.name) for f in fields(template) if f.init}
    kept["remembered_users"] = 0  # the user tower on every request, as a naive service runs it
    naive = NaiveRetrieval(**kept, views=views)
    champion.recommender.retrieval = naive
    return replace(champion, retrieval=naive)


@bentoml.service(
    name="shoprec_naive_recommender",
    workers=get_settings().serving_workers,
    threads=get_settings().serving_threads,
    **http_config(get_settings()),
)
class NaiveRecommender:
    """POST /recommend as serving.service.Recommender answers it, features through Feast's SDK per request."""

    def __init__(self):
        import torch

        from core.layout import Layout, lake_as_of
        from features.store import open_store

        torch.set_num_threads(1)
        settings = get_settings()
        self.now = lake_as_of(Layout(settings.home)) or pd.Timestamp.now(tz="UTC")  # a replayed shop's clock
        self.champion = naive_champion(settings, open_store(settings), self.now)
        quiet_request_warnings()  # as the service does

    @bentoml.api(input_spec=RecommendRequest)
    def recommend(self, user_id: str, k: int, exclude: list[str], session_items: list[str],
                  exclude_purchased: bool) -> Recommendations:  # fmt: skip
        from serving.recommend import recommend

        answer = recommend(self.champion, user_id, k, exclude, session_items, exclude_purchased, self.now)
        status = FeatureStatus(clock="shop", as_of=str(self.now), views=answer.statuses, stale=[])
        return Recommendations(items=[RecommendedItem(item_id=i, score=s, reason=r) for i, s, r in answer.items],
                               model_version=self.champion.tag, request_id=uuid.uuid4().hex, feature_status=status,
                               fallback=answer.fallback)  # fmt: skip
