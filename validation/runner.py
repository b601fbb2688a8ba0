"""Run an expectation suite over a DataFrame with GX Core and turn its unexpected indices into per-row reasons.

One ephemeral GX context per process and Data Docs folder, created on first use (importing has no side effects).
Each run goes through a Checkpoint whose UpdateDataDocsAction renders the run into HTML Data Docs.
"""

from functools import lru_cache
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.expectations.metadata_types import FailureSeverity

# COMPLETE gives every unexpected row index; the value lists it also carries are not needed.
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 0, "return_unexpected_index_query": False}


@lru_cache(maxsize=4)
def _checkpoint(suite_name: str, docs_dir: str, suite_factory) -> gx.Checkpoint:
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    context.add_data_docs_site(
        site_name="shoprec",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = context.data_sources.add_pandas(suite_name).add_dataframe_asset("batch")
    suite = context.suites.add(suite_factory())
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch.add_batch_definition_whole_dataframe("whole"), suite=suite)
    )
    return context.checkpoints.add(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["shoprec"])],
            result_format=RESULT_FORMAT,
        )
    )


def row_reasons(
    frame: pd.DataFrame, suite_factory, parameters: dict, run_name: str, docs_dir: Path
) -> tuple[pd.Series, dict[str, int]]:
    """Per row, the ';'-joined rules of critical expectations it broke ('' when none), and per warning rule, how
    many rows it flagged."""
    reasons = pd.Series("", index=frame.index, dtype=object)
    flags: dict[str, int] = {}
    if frame.empty:
        return reasons, flags
    checkpoint = _checkpoint(suite_factory.__name__, str(docs_dir), suite_factory)
    outcome = checkpoint.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        run_id=RunIdentifier(run_name=run_name),
    )
    (validation,) = outcome.run_results.values()
    for result in validation.results:
        config = result.expectation_config
        if result.exception_info and result.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {config.type} failed to run: {result.exception_info}")
        rows = result.result.get("unexpected_index_list") or []
        rule = config.meta["rule"]
        if config.severity != FailureSeverity.CRITICAL:
            flags[rule] = len(rows)
        elif rows:
            hit = reasons.loc[rows]
            reasons.loc[rows] = hit.where(hit == "", hit + ";") + rule
    return reasons, flags
