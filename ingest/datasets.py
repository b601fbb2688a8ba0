"""The datasets shoprec can replay, by name."""

from pathlib import Path

from ingest import movielens, online_retail, taobao
from ingest.source import SourceData

NAMES = ("online_retail", "taobao", "movielens")


def load(name: str, data_dir: Path | None = None) -> SourceData:
    """Load a dataset by name. Online Retail ships with shoprec (data_dir overrides it); Taobao and MovieLens are
    read from data_dir (SHOPREC_DATA_DIR, by default ../shared/data)."""
    if name == "online_retail":
        path = data_dir / "online_retail" / "online_retail.csv.gz" if data_dir else None
        return online_retail.load(path)
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    if data_dir is None or not data_dir.exists():
        raise FileNotFoundError(
            f"dataset {name!r} is not shipped with shoprec (its terms forbid it): point SHOPREC_DATA_DIR at a "
            f"folder holding it (looked in {data_dir})"
        )
    return {"taobao": taobao.load, "movielens": movielens.load}[name](data_dir)
