"""MovieLens 100K (read from ../shared/data) onto the contract."""

import pandas as pd
import pytest

from ingest import datasets


@pytest.fixture(scope="module")
def source(shared_data):
    return datasets.load("movielens", shared_data)


def test_every_rating_is_one_purchase_event(source):
    events = source.events
    assert len(events) == 100_000 and source.raw_rows == 100_000 and source.excluded.empty
    assert events["event_id"].is_unique
    assert (events["user_id"].nunique(), events["item_id"].nunique()) == (943, 1_682)
    assert set(events["event_type"]) == {"purchase"}
    assert events["event_timestamp"].min() >= pd.Timestamp("1997-09-19", tz="UTC")
    assert events["event_timestamp"].max() <= pd.Timestamp("1998-04-23", tz="UTC")


def test_catalog_has_titles_and_genres(source):
    toy_story = source.catalog.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["category"] == "Animation|Children's|Comedy"
    assert len(source.catalog) == 1_682


def test_unknown_dataset_and_missing_folder_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("amazon", tmp_path)
    with pytest.raises(FileNotFoundError, match="SHOPREC_DATA_DIR"):
        datasets.load("movielens", tmp_path / "absent")
