"""Training/serving skew: for a sample of users at a fixed moment, the online request path returns the same top-k,
with scores within 1e-4, as offline scoring of the same champion (Feast's point-in-time join) at that moment."""

import numpy as np

from core.layout import Layout, lake_as_of
from core.settings import Settings
from features.build import lake_days, read_events
from features.store import open_store
from serving.champion import load_champion
from serving.recommend import recommend
from training import artefact, publish

K = 10


def test_online_top_k_equals_offline_scoring_of_the_same_champion(retail_home):
    settings = Settings(home=retail_home, serving_clock="shop")
    layout = Layout(retail_home)
    moment = lake_as_of(layout)  # a midnight: the snapshot both paths read
    store = open_store(settings)
    champion = load_champion(settings, store, moment)
    assert champion.exact, "Online Retail's catalog is small enough for the exact index"
    offline = artefact.load(publish.champion_path(settings), store, as_of=moment, now=moment)

    events = read_events(layout, lake_days(layout)[-1])
    recent = events[events["event_timestamp"] >= moment - np.timedelta64(7, "D")]["user_id"].unique()
    users = np.random.default_rng(0).choice(np.sort(recent), size=min(25, len(recent)), replace=False)
    scores = offline.score(users.astype(object), champion.item_ids, "all")
    for user, row in zip(users, scores, strict=True):
        online = recommend(champion, user, K, now=moment)
        assert online.fallback is None, f"user {user} has fresh features at the shop's clock"
        catalog_rows = np.flatnonzero(champion.in_catalog)
        top = catalog_rows[np.argsort(-row[catalog_rows], kind="stable")[:K]]
        assert [item for item, _, _ in online.items] == list(champion.item_ids[top]), user
        np.testing.assert_allclose([score for _, score, _ in online.items], row[top], atol=1e-4)


def test_a_returning_user_skips_the_tower_and_the_shortlist_and_gets_the_same_answer(retail_home, monkeypatch):
    """A returning user's stored row is read once per champion, and their vector and shortlist are remembered per
    freshness of their views: their later requests read nothing from the store and run neither the user tower nor
    the shortlist, only the clock's features, and answer as a champion that remembers nothing does, at the same
    clock and hours before (other ages, other scores); a clock past the features' TTL (another freshness) builds
    them again from the same row; the shortlist's item columns are picked out of the catalog once per shortlist
    and freshness epoch of the catalog's rows; the least recently seen user goes first."""
    from core.contract import as_utc
    from features.online import OnlineFeatures
    from serving import recommend as path
    from serving.champion import OnlineRetrieval
    from training.pipeline import Retrieval

    layout = Layout(retail_home)
    moment = lake_as_of(layout)
    events = read_events(layout, lake_days(layout)[-1]).sort_values("event_timestamp")
    user, other = [str(u) for u in events["user_id"].drop_duplicates(keep="last").iloc[-2:]]  # active on the newest day
    built = []  # (remembering champion?, what was built, user)
    tower, short = Retrieval.users, path.shortlist
    monkeypatch.setattr(Retrieval, "users", lambda self, ids: built.append(
        (bool(self.remembered_users), "vector", ids[0])) or tower(self, ids))  # fmt: skip
    monkeypatch.setattr(path, "shortlist", lambda retrieval, users, *rest: built.append(
        (bool(retrieval.remembered_users), "shortlist", users[0])) or short(retrieval, users, *rest))  # fmt: skip
    read, pick = OnlineFeatures.user_row, OnlineRetrieval._numbers_of
    monkeypatch.setattr(OnlineFeatures, "user_row", lambda self, user_id: built.append(
        (self is remembering.retrieval.readers["ranker_v1"], "row", user_id)) or read(self, user_id))  # fmt: skip
    monkeypatch.setattr(OnlineRetrieval, "_numbers_of", lambda self, *args: built.append(
        (bool(self.remembered_users), "item numbers", user)) or pick(self, *args))  # fmt: skip
    store = open_store(Settings(home=retail_home))
    remembering = load_champion(Settings(home=retail_home, serving_clock="shop"), store, moment)
    forgetting = load_champion(Settings(home=retail_home, serving_remembered_users=0), store, moment)
    shortlists = []  # per request of the remembering champion: (the user's freshness, the catalog's epoch)

    def both(when, **options):
        kept, fresh = (recommend(champion, user, K, now=when, **options) for champion in (remembering, forgetting))
        assert kept.fallback is None and (kept.items, kept.statuses) == (fresh.items, fresh.statuses)
        shortlists.append((kept.statuses["user_activity"], remembering.retrieval.catalog.epoch(as_utc(when))))
        return kept

    def remembered_builds():
        return [b for b in built if b[0] and b[1] != "item numbers"]

    first = both(moment)
    assert remembered_builds() == [(True, "row", user), (True, "vector", user), (True, "shortlist", user)]
    assert (False, "row", user) in built, "the champion that remembers nothing reads the store"
    hours_before = both(moment - np.timedelta64(5, "h"))  # the same freshness (the test shop's rows turn stale
    assert hours_before.statuses == first.statuses  # just after its clock), other ages
    assert [score for _, score, _ in hours_before.items] != [score for _, score, _ in first.items], "ages moved"
    assert both(moment, exclude=[first.items[0][0]]).items[0] == first.items[1]  # filters come after the shortlist
    assert both(moment).items == first.items
    assert len(remembered_builds()) == 3, "every later request found the user's row, vector and shortlist"
    later = both(moment + np.timedelta64(400, "D"))  # user_activity's TTL passed: blanked activity, another vector
    assert later.statuses["user_activity"] == "stale" and later.statuses["user_history"] == "fresh"
    assert remembered_builds()[3:] == [(True, "vector", user), (True, "shortlist", user)], "the same row"
    assert both(moment).items == first.items, "back to the first freshness: its entries are still there"
    assert len(remembered_builds()) == 5
    # the item columns: picked again only when the shortlist or the catalog's freshness epoch changed
    changes = [n for n, seen in enumerate(shortlists) if n == 0 or seen != shortlists[n - 1]]
    assert len(changes) < len(shortlists) and shortlists[-1][1] != shortlists[-2][1], "hits and a new epoch"
    assert len([b for b in built if b[:2] == (True, "item numbers")]) == len(changes)

    built.clear()
    one = load_champion(Settings(home=retail_home, serving_clock="shop", serving_remembered_users=1), store, moment)
    for someone in (user, user, other, user):
        recommend(one, someone, K, now=moment)
    assert [b[2] for b in built if b[1] == "shortlist"] == [user, other, user], "one remembered: the latest"
    assert [b[2] for b in built if b[1] == "row"] == [user, other, user], "the row goes with the rest"
    built.clear()
    for someone in (user, "made-up-1", "made-up-2", "made-up-1", user):
        recommend(one, someone, K, now=moment)
    rows_read = [b[2] for b in built if b[1] == "row"]
    assert rows_read == ["made-up-1", "made-up-2", "made-up-1"], "ids the store lacks are read, never remembered"


def test_the_catalogs_numbers_are_converted_once_per_freshness_epoch_and_equal_a_fresh_conversion(retail_home):
    """OnlineRetrieval.number_columns picks items' rows out of the catalog's columns converted once per freshness
    epoch: at every clock, back and forth across epochs, what training's number_columns gives from the rows."""
    from training.candidates import ITEM_NUMBERS
    from training.examples import RANKER_SERVICE
    from training.pipeline import Retrieval

    moment = lake_as_of(Layout(retail_home))
    settings = Settings(home=retail_home)
    champion = load_champion(settings, open_store(settings), moment)
    items = champion.item_ids[::37]
    for days in (0, 400, 0, 1, 400):  # fresh, stale, fresh again ...
        retrieval = champion.at(moment + np.timedelta64(days, "D"))
        online = retrieval.number_columns(RANKER_SERVICE, "item_id", items, ITEM_NUMBERS)
        by_rows = Retrieval.number_columns(retrieval, RANKER_SERVICE, "item_id", items, ITEM_NUMBERS)
        assert online.keys() == by_rows.keys()
        for name in ITEM_NUMBERS:
            np.testing.assert_array_equal(online[name], by_rows[name])
            assert online[name].dtype == np.float64 and np.isfinite(online[name]).all()
    stale = champion.at(moment + np.timedelta64(400, "D"))
    stale.number_columns(RANKER_SERVICE, "item_id", items, ITEM_NUMBERS)
    assert set(stale.statuses.values()) >= {"stale"}, "the items' statuses are still reported"
