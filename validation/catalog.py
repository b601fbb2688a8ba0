"""Apply catalog feeds from landing/catalog/ to the item catalog, through the catalog suite.

Valid rows are upserted into catalog/items.parquet (a later feed's row replaces an earlier one for the same item);
invalid rows go to quarantine/catalog/<feed>.parquet with their rule. Re-applying the same feeds changes nothing.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from core.contract import CATALOG_COLUMNS
from core.layout import Layout, write_parquet
from validation.runner import row_reasons
from validation.suites import catalog_suite


@dataclass
class CatalogResult:
    feed: str
    received: int
    accepted: int
    quarantined: int
    items: int  # items in the catalog after this feed

    def to_dict(self) -> dict:
        return asdict(self)


def apply_feeds(layout: Layout) -> list[CatalogResult]:
    """Apply every feed in landing/catalog/, in name order; the catalog is rebuilt from all of them, so the
    result does not depend on what ran before."""
    feeds = sorted((layout.landing / "catalog").glob("*.parquet"))
    catalog = pd.DataFrame(columns=list(CATALOG_COLUMNS))
    results = []
    for feed in feeds:
        rows = pd.read_parquet(feed)
        missing = [c for c in CATALOG_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"catalog feed {feed.name} lacks column(s) {', '.join(missing)}")
        good, bad = _split(rows[list(CATALOG_COLUMNS)], feed, layout)
        catalog = pd.concat([catalog[~catalog["item_id"].isin(good["item_id"])], good], ignore_index=True)
        results.append(CatalogResult(feed.stem, len(rows), len(good), len(bad), len(catalog)))
    if feeds:
        write_parquet(catalog.sort_values("item_id", kind="stable").reset_index(drop=True), layout.catalog)
    return results


def _split(rows: pd.DataFrame, feed: Path, layout: Layout) -> tuple[pd.DataFrame, pd.DataFrame]:
    checked = rows.assign(item_id_first_in_feed=~rows["item_id"].duplicated() | rows["item_id"].isna())
    reasons, _ = row_reasons(checked, catalog_suite, {}, run_name=f"catalog-{feed.stem}", docs_dir=layout.docs)
    bad = reasons != ""
    target = layout.quarantine / "catalog" / f"{feed.stem}.parquet"
    if bad.any():
        write_parquet(rows[bad].astype("string").assign(reason=reasons[bad]).reset_index(drop=True), target)
    else:
        target.unlink(missing_ok=True)
    return rows[~bad], rows[bad]
