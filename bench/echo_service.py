"""The HTTP floor of bench/serving.py: `bentoml serve bench.echo_service:EchoRecommender`.

The service's HTTP contract (the same request model, the same response models, the same guard in front) answering
a fixed list of k items without any model or feature read. What it costs per request at the fixed rate is what
BentoML, loopback and the load generator cost on these two cores: the part of the service's latency no change to
the request path can remove, measured in the same run as the service.
"""

import uuid

import bentoml

from core.settings import get_settings
from serving.guard import Guard
from serving.schemas import FeatureStatus, Recommendations, RecommendedItem
from serving.service import RecommendRequest, http_config

ITEMS = [RecommendedItem(item_id=f"echo-{i}", score=1.0 - i / 100, reason="popular") for i in range(100)]


@bentoml.service(name="shoprec_echo", workers=get_settings().serving_workers, **http_config(get_settings()))
class EchoRecommender:
    @bentoml.api(input_spec=RecommendRequest)
    async def recommend(self, user_id: str, k: int, exclude: list[str], session_items: list[str],
                        exclude_purchased: bool) -> Recommendations:  # fmt: skip
        return Recommendations(items=ITEMS[:k], model_version="echo", request_id=uuid.uuid4().hex,
                               feature_status=FeatureStatus(clock="shop", as_of="", views={}, stale=[]))  # fmt: skip


def _ready() -> tuple[bool, dict]:
    return True, {"ready": True}


EchoRecommender.add_asgi_middleware(Guard, status=_ready, settings=get_settings, unservable=lambda: None,
                                    api_paths=("/recommend",))  # fmt: skip
