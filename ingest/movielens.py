"""MovieLens 100K (GroupLens, 1997-09 .. 1998-04) onto the event contract.

Read from SHOPREC_DATA_DIR (../shared/data); research-only terms, so it never ships with the project.

How its quirks map:
- Every rating is one `purchase` event: a rating says the user watched the film, which is the consumption event
  of this shop. The rating value does not enter the contract (evaluation counts all ratings as positives).
- event_id = ml-<user>-<item> (one rating per pair in the data); quantity 1; no price.
- Catalog from u.item (latin-1): title, category = the genres joined by '|', description = genres and release
  date in words; first_seen = first rating.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from ingest.source import SourceData, empty_excluded

NAME = "movielens"
TIMEZONE = "UTC"
FOLDER = Path("movielens_100k")
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def load(path: Path) -> SourceData:
    """path: the ml-100k folder, or the data folder holding movielens_100k/."""
    folder = path / FOLDER if (path / FOLDER).is_dir() else path
    ratings = pd.read_csv(folder / "u.data", sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype=str)
    events = pd.DataFrame(
        {
            "event_id": "ml-" + ratings["user"] + "-" + ratings["item"],
            "user_id": ratings["user"],
            "item_id": ratings["item"],
            "event_type": "purchase",
            "event_timestamp": pd.to_datetime(pd.to_numeric(ratings["ts"]), unit="s", utc=True),
            "session_id": None,
            "quantity": 1.0,
            "price": np.nan,
        }
    )
    items = pd.read_csv(
        folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False,
        names=["item", "title", "release", "video_release", "url", *GENRES],
    )  # fmt: skip
    flags = items[GENRES].astype(int).to_numpy().astype(bool)
    genres = pd.Series(["|".join(np.array(GENRES)[row]) for row in flags], index=items.index)
    first_seen = events.groupby("item_id")["event_timestamp"].min()
    catalog = pd.DataFrame(
        {
            "item_id": items["item"],
            "title": items["title"],
            "description": genres.str.replace("|", ", ") + " film released " + items["release"],
            "category": genres,
            "price": np.nan,
            "first_seen": items["item"].map(first_seen),
        }
    )
    return SourceData(
        name=NAME,
        events=events,
        catalog=catalog,
        excluded=empty_excluded(["user", "item", "rating", "ts"]),
        raw_rows=len(ratings),
        timezone=TIMEZONE,
    )
