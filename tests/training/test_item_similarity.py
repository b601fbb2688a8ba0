"""The ranker's EASE^R item-to-item weights: unpruned they give EASE^R's own scores (item-side and user-side
forms), pruning keeps each item's strongest weights, unknown users and items score 0, and a save round-trips."""

import numpy as np
import pandas as pd
import pytest

from tests.training.conftest import tasteful_shop
from training.baselines import EASE
from training.item_similarity import ItemSimilarity


def pairs_of(users, items) -> pd.DataFrame:
    return pd.DataFrame({"user": np.repeat(users, len(items)), "item_id": np.tile(items, len(users))})


@pytest.mark.parametrize("every_nth_user, mode", [(1, "items"), (8, "users")])
def test_unpruned_weights_give_ease_scores(every_nth_user, mode):
    events, _ = tasteful_shop()
    # Fewer users than items takes EASE's user-side (Woodbury) form: keep every 8th user for that.
    events = events[events["user_id"].isin(sorted(events["user_id"].unique())[::every_nth_user])]
    ease = EASE().fit(events, None, None)
    assert ease.mode == mode
    similarity = ItemSimilarity.fit(events, neighbours=10**6)
    users = np.array(sorted(events["user_id"].unique())[:5], dtype=object)
    items = similarity.items.to_numpy(object)
    past = events[events["user_id"].isin(users)].rename(columns={"user_id": "user"})
    got = similarity.scores(past, pairs_of(users, items)).reshape(len(users), len(items))
    np.testing.assert_allclose(got, ease.score(users, items, "all"), atol=1e-5)


def test_pruning_keeps_each_items_strongest_weights_and_unknowns_score_zero(tmp_path):
    events, _ = tasteful_shop()
    full = ItemSimilarity.fit(events, neighbours=10**6).weights.toarray()
    pruned = ItemSimilarity.fit(events, neighbours=5, block=7)  # blocks smaller than the catalog
    kept = pruned.weights.toarray()
    assert (np.count_nonzero(kept, axis=1) <= 5).all()
    for row in range(len(kept)):
        strongest = np.sort(np.abs(full[row]))[-5:]
        np.testing.assert_allclose(np.sort(np.abs(kept[row][kept[row] != 0])), strongest[strongest > 0], rtol=1e-5)

    past = pd.DataFrame({"user": [0, 0, 1], "item_id": ["i1", "i2", "no-such-item"]})
    pairs = pd.DataFrame({"user": [0, 0, 1, 2], "item_id": ["i3", "no-such-item", "i3", "i3"]})
    scores = pruned.scores(past, pairs)
    assert scores[0] == pytest.approx(kept[pruned.items.get_loc("i1"), pruned.items.get_loc("i3")]
                                      + kept[pruned.items.get_loc("i2"), pruned.items.get_loc("i3")])  # fmt: skip
    assert list(scores[1:]) == [0.0, 0.0, 0.0]  # unknown candidate; past unknown to the model; no past at all

    pruned.save(tmp_path / "similarity.npz")
    loaded = ItemSimilarity.load(tmp_path / "similarity.npz")
    assert list(loaded.items) == list(pruned.items)
    np.testing.assert_array_equal(loaded.weights.toarray(), kept)
    np.testing.assert_array_equal(loaded.scores(past, pairs), scores)


def test_one_users_scores_are_their_row_of_the_batch():
    """Serving asks for one user at a time, which takes a path without sparse matrices: the same numbers."""
    events, _ = tasteful_shop()
    similarity = ItemSimilarity.fit(events, neighbours=20)
    users = np.array(sorted(events["user_id"].unique())[:6], dtype=object)
    items = np.append(similarity.items.to_numpy(object)[:40], "no-such-item")
    past = events[events["user_id"].isin(users)].rename(columns={"user_id": "user"})
    batch = similarity.scores(past, pairs_of(users, items)).reshape(len(users), len(items))
    for row, user in enumerate(users):
        alone = similarity.scores(past, pairs_of(np.array([user], dtype=object), items))
        np.testing.assert_allclose(alone, batch[row], rtol=1e-6, atol=1e-7)
        assert alone[-1] == 0.0
    nobody = similarity.scores(past.iloc[:0], pairs_of(users[:1], items))
    assert (nobody == 0).all()
