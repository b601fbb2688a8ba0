"""The promotion gate and the model store: a challenger is published to BentoML's model store and made champion
only when it is not worse than the champion, on the same frozen split, beyond a stated tolerance.

The gate compares Recall@20 and NDCG@20 of the split's main target. TOLERANCE is relative: a challenger may trail
the champion by at most 2% on each (noise between retrains on a shifting window is about that size), and must
always beat popularity, the floor any real model clears; a broken model (shuffled embeddings, a bad feature join)
falls far below both and is never published. The champion is a pointer kept beside the store (champion.json, a
history of tags), so rollback is moving the pointer back, and every published tag stays loadable.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.layout import Layout, read_json, write_json
from core.settings import Settings

MODEL_NAME = "shoprec_recommender"
GATED_METRICS = ("recall@20", "ndcg@20")
TOLERANCE = 0.02


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"promote": self.promote, "reasons": self.reasons}


def decide(challenger: dict, champion: dict | None, floor: dict | None = None, tolerance: float = TOLERANCE):
    """challenger/champion/floor: metrics of the main target on the same split (floor: the popularity baseline)."""
    reasons, promote = [], True
    for metric in GATED_METRICS:
        mine = challenger[metric]
        if floor is not None and mine <= floor[metric]:
            promote = False
            reasons.append(f"{metric} {mine:.4f} does not beat popularity's {floor[metric]:.4f}")
        if champion is not None:
            needed = champion[metric] * (1 - tolerance)
            verdict = "keeps up with" if mine >= needed else "falls behind"
            promote &= mine >= needed
            reasons.append(f"{metric} {mine:.4f} {verdict} the champion's {champion[metric]:.4f} "
                           f"(needs >= {needed:.4f})")  # fmt: skip
    if champion is None:
        reasons.append("no champion yet")
    return Decision(promote, reasons)


def _store(settings: Settings):
    # BentoML reads BENTOML_HOME once per process; an explicit store keeps each SHOPREC_HOME (and each test) apart.
    from bentoml._internal.models import ModelStore

    path = Layout(settings.home).model_store
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(path)


def _record_path(settings: Settings) -> Path:
    return Layout(settings.home).model_store.parent / "champion.json"


def champion(settings: Settings) -> str | None:
    """The current champion's tag (name:version), or None before the first promotion."""
    path = _record_path(settings)
    history = read_json(path)["history"] if path.exists() else []
    return history[-1] if history else None


def champion_path(settings: Settings) -> Path | None:
    """The champion's artefact folder inside the model store."""
    import bentoml

    tag = champion(settings)
    return Path(bentoml.models.get(tag, _model_store=_store(settings)).path) if tag else None


def publish(artefact: Path, settings: Settings, labels: dict, metadata: dict) -> str:
    """Copy an artefact folder into the model store as a new version of MODEL_NAME and make it champion.

    Idempotent per labels["run_id"]: a retried publish task (its first try lost after the version entered the
    store, before anything recorded it) finds that version and makes it champion instead of adding a second."""
    import bentoml

    store = _store(settings)
    run_id = labels.get("run_id")
    earlier = [m for m in bentoml.models.list(_model_store=store)
               if run_id and m.tag.name == MODEL_NAME and m.info.labels.get("run_id") == run_id]  # fmt: skip
    if earlier:
        tag = str(earlier[0].tag)
    else:
        with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata, _model_store=store) as model:
            shutil.copytree(artefact, model.path, dirs_exist_ok=True)
        tag = str(model.tag)
    path = _record_path(settings)
    history = read_json(path)["history"] if path.exists() else []
    if tag not in history:  # the retry of a publish that got this far already changes nothing
        write_json(path, {"history": [*history, tag]})
    return tag


def rollback(settings: Settings) -> str:
    """Make the previous champion current again; returns its tag. The demoted version stays in the store."""
    path = _record_path(settings)
    history = read_json(path)["history"] if path.exists() else []
    if len(history) < 2:
        raise ValueError("there is no previous champion to roll back to" if history else "there is no champion yet")
    write_json(path, {"history": history[:-1], "rolled_back": [*read_json(path).get("rolled_back", []), history[-1]]})
    return history[-2]
