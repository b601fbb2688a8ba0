"""Hyperparameters of the two models, as typed dataclasses with named presets (`tiny` for tests, `full`)."""

from dataclasses import asdict, dataclass, field, replace


@dataclass
class TwoTowerConfig:
    dim: int = 64  # width of the shared embedding space the two towers meet in
    id_buckets: int = 0  # hashed item-id rows (unseen ids still land somewhere); 0: sized to the data, the power
    #                      of two >= 2 x the train items, so collisions stay rare and no update touches idle rows
    category_buckets: int = 1 << 14  # hashed category rows
    text_dim: int = 384  # width of the catalog's text embedding (all-MiniLM-L6-v2)
    history_length: int = 100  # how many of the user's latest events the user tower reads (user_history holds 100)
    history: str = "auto"  # "before": the user's past at the example's time; "all_but_target": every other train
    #                        event of the user (protocols without time, e.g. msr-stratified); "auto": "before"
    #                        when fitted up to a cutoff time, "all_but_target" when fitted without one
    id_dropout: float = 0.25  # share of items trained without their id vector, so text and category alone work
    history_dropout: float = -1.0  # share of history events hidden in each training example, denoising so the
    #                                user tower generalises instead of echoing its inputs (Mult-DAE's 0.5); -1:
    #                                0.5 with history="all_but_target", 0 with "before" (the real past, in order)
    temperature: float = 0.07  # softmax temperature of InfoNCE
    log_q: bool = True  # correct in-batch negatives for their popularity (subtract log q)
    extra_negatives: int = 8192  # uniform random negatives per batch on top of the in-batch ones (0: none); a
    #                              catalog this small or smaller is taken whole: the exact full softmax
    batch_size: int = 256  # small batches, many steps: negatives come from the catalog, not only the batch
    epochs: int = 20  # upper bound; early stopping on validation recall ends sooner
    max_epoch_examples: int = 200_000  # examples drawn per epoch (all of them in a smaller shop)
    patience: int = 4  # epochs without a better validation recall@20 before stopping
    lr: float = 3e-3
    weight_decay: float = 1e-6
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RankerConfig:
    hidden: tuple[int, ...] = (128, 64)  # shared bottom MLP widths
    candidates: int = 200  # retrieval candidates per user (plus the user's own history items)
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"interact": 1.0, "add_to_cart": 1.0, "purchase": 2.0}
    )  # weight of each head's BCE; a head whose label a dataset lacks is masked out
    batch_size: int = 2048
    epochs: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-5
    label_share: float = 0.1  # share of train events in each label window (the ranker's labels)
    label_windows: int = 3  # label windows stacked back in time, newest first, so the purchase head sees three
    #                         times the purchases (Taobao: 235 in the newest window, 629 in three; 'buy' recall@20
    #                         0.248 -> 0.265, NDCG@20 0.132 -> 0.149, mean of 5 ranker seeds); without time order
    #                         (msr-stratified) there is one random window
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # tiny's epochs draw at most 100k examples: the tests' shops are far smaller (unchanged by it), and the demo's
    # retrain of Online Retail (350k train events) halves its two-tower time; its champion still beats popularity.
    "tiny": (TwoTowerConfig(dim=16, category_buckets=1 << 8, history_length=10, batch_size=128, epochs=4,
                            patience=2, extra_negatives=32, max_epoch_examples=100_000),
             RankerConfig(hidden=(16,), candidates=30, epochs=3, batch_size=256)),
    "full": (TwoTowerConfig(), RankerConfig()),
}  # fmt: skip


def preset(name: str, **two_tower_overrides) -> tuple[TwoTowerConfig, RankerConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    two_tower, ranker = PRESETS[name]
    return replace(two_tower, **two_tower_overrides), replace(ranker)
