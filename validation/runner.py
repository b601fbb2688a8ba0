"""Run an expectation suite over a DataFrame with GX Core and turn its unexpected indices into per-row reasons.

One ephemeral GX context per process and Data Docs folder, created on first use (importing has no side effects).
Each run is rendered into HTML Data Docs. GX stores a result by deep-copying and serialising it, which for a
million-row batch with COMPLETE row lists costs far more than validating; so the gate reads the row lists from
the result in memory and stores (and renders) a copy without them: the docs show counts and rules, and the rows
themselves are in quarantine.
"""

import copy
from functools import lru_cache
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.execution_engine import pandas_execution_engine
from great_expectations.expectations.metadata_types import FailureSeverity

# COMPLETE gives every unexpected row index; the value lists it also carries are not needed.
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 0, "return_unexpected_index_query": False}
ROW_LISTS = ("unexpected_index_list", "unexpected_list", "partial_unexpected_list", "partial_unexpected_index_list",
             "partial_unexpected_counts")  # fmt: skip


@lru_cache(maxsize=4)
def _validator(suite_name: str, docs_dir: str, suite_factory):
    # GX fingerprints every in-memory batch by hashing the whole DataFrame (about 1 s per million rows, twice per
    # run) just to label it; the gate names each run by its batch id instead, so the fingerprint is switched off.
    pandas_execution_engine.HASH_THRESHOLD = 0
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
    batch_definition = context.data_sources.add_pandas(suite_name).add_dataframe_asset("batch")
    suite = context.suites.add(suite_factory())
    return context, batch_definition.add_batch_definition_whole_dataframe("whole"), suite


def row_reasons(
    frame: pd.DataFrame, suite_factory, parameters: dict, run_name: str, docs_dir: Path
) -> tuple[pd.Series, dict[str, int]]:
    """Per row, the ';'-joined rules of critical expectations it broke ('' when none), and per warning rule, how
    many rows it flagged. Renders the run into the Data Docs under docs_dir."""
    reasons = np.full(len(frame), "", dtype=object)
    flags: dict[str, int] = {}
    if frame.empty:
        return pd.Series(reasons, index=frame.index), flags
    index = frame.index
    frame = frame.reset_index(drop=True)  # GX reports index labels; make them positions
    context, batch_definition, suite = _validator(suite_factory.__name__, str(docs_dir), suite_factory)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    validation = batch.validate(suite, result_format=RESULT_FORMAT, expectation_parameters=parameters)
    for result in validation.results:
        config = result.expectation_config
        if result.exception_info and result.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {config.type} failed to run: {result.exception_info}")
        rule = config.meta["rule"]
        if config.severity != FailureSeverity.CRITICAL:
            flags[rule] = int(result.result.get("unexpected_count") or 0)
            continue
        rows = np.asarray(result.result.get("unexpected_index_list") or [], dtype=np.int64)
        if rows.size:
            reasons[rows] = [f"{r};{rule}" if r else rule for r in reasons[rows]]
    _render_docs(context, validation, suite.name, run_name)
    return pd.Series(reasons, index=index), flags


def _render_docs(context, validation, suite_name: str, run_name: str) -> None:
    for result in validation.results:
        for key in ROW_LISTS:
            result.result.pop(key, None)  # the rows are in quarantine; the page keeps counts and percentages
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
        run_id=RunIdentifier(run_name=run_name),
        batch_identifier=run_name,
    )
    context.validation_results_store.set(key, copy.copy(validation))
    context.build_data_docs(site_names=["shoprec"], resource_identifiers=[key])
