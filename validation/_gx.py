"""Great Expectations plumbing: a quiet ephemeral context, suites run on pandas batches, and the
conversion of GX results into our check dicts. Only this module (and only inside functions that
the validate_* calls reach) imports GX: importing it costs about 2 s and must never happen when the
DAG file is parsed.

Why pandas batches: GX through SQLAlchemy on DuckDB returns every expectation failed ("list index
out of range"), so every table is read from the warehouse as Arrow, converted to pandas here and
validated as an in-memory dataframe asset.

Known GX 1.24 behaviours this module works around (each has a test in tests/test_validation.py):
- row-level expectations pass on an empty table: callers always add a row count expectation;
- ``mostly`` and set membership ignore nulls: callers add explicit not-null / null-share checks;
- ``expect_column_values_to_be_between`` compares datetime64[us] columns one Python object at a
  time (slow, and it raises on years past 9999): timestamps are handed to GX tz-aware (UTC), which
  takes its vectorised path;
- ``expect_column_values_to_be_in_type_list`` does not recognise pandas 3's ``str`` dtype: column
  types are checked on the Arrow schema instead (``validation._common.type_check``);
- results do not come back in suite order: each expectation carries its plan index in ``meta``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validation.result import fmt_value

log = logging.getLogger(__name__)

_GX_LOGGERS = ("great_expectations", "posthog")


@contextlib.contextmanager
def quiet_gx() -> Iterator[None]:
    """Keep GX's INFO chatter (hundreds of "Skipping registering function" lines at import) and its
    deprecation warnings out of the task log, for the duration of the block only."""
    saved = {}
    for name in _GX_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"great_expectations(\..*)?")
            warnings.filterwarnings("ignore", message=r".*(row_condition|condition_parser).*")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def import_gx() -> tuple[Any, Any]:
    """(great_expectations, great_expectations.expectations), imported quietly."""
    with quiet_gx():
        import great_expectations as gx
        import great_expectations.expectations as gxe
    return gx, gxe


def gx_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("great-expectations")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


@dataclass
class Planned:
    """One expectation to run, with what our check dict needs to describe its outcome.

    ``label``: the rule in words, e.g. "min 0", "null share <= 1%".
    ``describe(result, df) -> (observed, text)``: the observed value and its words, called only for
    a failed expectation (so it may compute on the dataframe). Default: GX's observed value, or the
    offending values and their row count.
    """

    expectation: Any
    table: str
    column: str | None
    check: str
    severity: str
    expected: Any
    label: str
    describe: Callable[[dict, Any], tuple[Any, str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_dict(
    *,
    stage: str,
    table: str,
    column: str | None,
    check: str,
    severity: str,
    success: bool,
    observed: Any,
    expected: Any,
    label: str,
    observed_text: str | None = None,
    examples: list | None = None,
    unexpected_count: int | None = None,
    expectation: str | None = None,
) -> dict[str, Any]:
    """A check record with its one-line message: ``table.column: label — observed ... (e.g. ids)``."""
    where = f"{table}.{column}" if column else table
    examples = [str(e) for e in (examples or [])]
    if success:
        text = f"{where}: {label} — ok" + (f" (observed {observed_text or fmt_value(observed)})" if observed is not None else "")
    else:
        text = f"{where}: {label} — observed {observed_text if observed_text is not None else fmt_value(observed)}"
        if examples:
            text += f" (e.g. {', '.join(examples)})"
    return {
        "stage": stage,
        "table": table,
        "column": column,
        "check": check,
        "severity": severity,
        "success": bool(success),
        "observed": observed,
        "expected": expected,
        "examples": examples,
        "message": text,
        "expectation": expectation,
        "unexpected_count": unexpected_count,
    }


def _rows(n: int) -> str:
    return f"{n} row{'s' if n != 1 else ''}"


def default_describe(result: dict, df: Any) -> tuple[Any, str]:
    if "unexpected_count" in result:
        n = int(result.get("unexpected_count") or 0)
        values = list(dict.fromkeys(fmt_value(v) for v in result.get("partial_unexpected_list") or []))
        shown = ", ".join(values[:5])
        return values[:5], f"{shown} on {_rows(n)}" if shown else _rows(n)
    obs = result.get("observed_value")
    return obs, fmt_value(obs)


class Runner:
    """One ephemeral GX context for one validation stage: one pandas datasource, one dataframe asset
    per table, one suite and validation definition per table."""

    def __init__(self, stage: str, *, partial_count: int = 5, partial_rows: int = 50) -> None:
        self.stage = stage
        self.partial_count = partial_count
        self.partial_rows = partial_rows  # offending rows GX returns; their ids are deduplicated to partial_count
        self.gx, self.gxe = import_gx()
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        with quiet_gx():
            config = DataContextConfig(
                # no temporary docs site: the default ephemeral context leaves a /tmp folder behind
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                progress_bars=ProgressBarsConfig(globally=False),
            )
            self.context = self.gx.get_context(mode="ephemeral", project_config=config)
            self.datasource = self.context.data_sources.add_pandas(f"{stage}_warehouse")
        self.gx_seconds = 0.0
        self.suites_run = 0

    def run(self, table: str, df: Any, planned: list[Planned], id_columns: list[str]) -> list[dict[str, Any]]:
        """Run ``planned`` on ``df`` (the rows of ``table``); return one check dict per planned item."""
        if not planned:
            return []
        import pandas as pd

        gx = self.gx
        started = time.perf_counter()
        name = table.replace(".", "__")
        with quiet_gx():
            asset = self.datasource.add_dataframe_asset(name)
            batch_def = asset.add_batch_definition_whole_dataframe(f"{name}_all")
            suite = gx.ExpectationSuite(name=f"{self.stage}__{name}")
            for i, p in enumerate(planned):
                p.expectation.meta = {**(p.expectation.meta or {}), "plan_index": i, "check": p.check,
                                      "severity": p.severity}
                suite.add_expectation(p.expectation)
            suite = self.context.suites.add(suite)
            vd = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{self.stage}__{name}", data=batch_def, suite=suite)
            )
            result_format: dict[str, Any] = {
                "result_format": "SUMMARY",
                "partial_unexpected_count": self.partial_rows,
                "return_unexpected_index_query": False,
            }
            # Not "unexpected_index_column_names": GX then reads the id of every offending row one
            # cell at a time (seconds per 100k rows). Row positions are cheap; ids are looked up below.
            ids = [c for c in id_columns if c in df.columns]
            if ids and not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index(drop=True)
            res = vd.run(batch_parameters={"dataframe": df}, result_format=result_format)
        self.gx_seconds += time.perf_counter() - started
        self.suites_run += 1

        by_index = {r.expectation_config.meta["plan_index"]: r for r in res.results}
        out = []
        for i, p in enumerate(planned):
            r = by_index.get(i)
            out.append(self._to_check(p, r, df, ids))
        return out

    def _to_check(self, p: Planned, r: Any, df: Any, ids: list[str]) -> dict[str, Any]:
        etype = p.expectation.expectation_type if hasattr(p.expectation, "expectation_type") else type(p.expectation).__name__
        if r is None:  # pragma: no cover - GX dropped the expectation
            return check_dict(stage=self.stage, table=p.table, column=p.column, check=p.check, severity=p.severity,
                              success=False, observed="not evaluated", expected=p.expected, label=p.label,
                              expectation=etype)
        result = dict(r.result or {})
        exc = _exception_message(r.exception_info)
        if exc:
            return check_dict(stage=self.stage, table=p.table, column=p.column, check=p.check, severity=p.severity,
                              success=False, observed=f"could not evaluate: {exc}", expected=p.expected,
                              label=p.label, expectation=etype)
        examples: list = []
        if not r.success:
            positions = [i for i in result.get("partial_unexpected_index_list") or [] if isinstance(i, int)]
            if ids and positions:
                for row in df[ids].iloc[positions].itertuples(index=False):
                    vals = list(row)
                    if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):  # null id
                        continue
                    examples.append("/".join(fmt_value(v) for v in vals))
            examples = list(dict.fromkeys(examples))[: self.partial_count]
            observed, text = (p.describe or default_describe)(result, df)
        else:
            observed = result.get("observed_value")
            text = None
        count = result.get("unexpected_count")
        return check_dict(
            stage=self.stage, table=p.table, column=p.column, check=p.check, severity=p.severity,
            success=bool(r.success), observed=observed, expected=p.expected, label=p.label,
            observed_text=text, examples=examples,
            unexpected_count=int(count) if count is not None else None, expectation=etype,
        )

    def build_data_docs(self, out_dir: str | Path) -> str | None:
        """Render GX Data Docs (suites and validation results of this context) into
        ``out_dir/data_docs/<stage>/``; return the index.html path, or None if GX could not."""
        target = Path(out_dir) / "data_docs" / self.stage
        started = time.perf_counter()
        try:
            with quiet_gx():
                site = f"{self.stage}_docs"
                self.context.add_data_docs_site(
                    site,
                    {
                        "class_name": "SiteBuilder",
                        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(target)},
                        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    },
                )
                self.context.build_data_docs(site_names=[site])
        except Exception:  # evidence is best effort: our own HTML/JSON are always written
            log.warning("could not build Great Expectations Data Docs into %s", target, exc_info=True)
            return None
        finally:
            self.docs_seconds = time.perf_counter() - started
        _prune_static(target)
        index = target / "index.html"
        return str(index) if index.exists() else None


def finish(res: Any, runner: Runner | None, out_dir: str | Path | None) -> None:
    """Record the GX version and, with ``out_dir``, write the evidence: GX Data Docs (when a suite
    ran), ``validation_<stage>.json`` and ``validation_<stage>.html``."""
    res.context["great_expectations"] = gx_version() if runner is not None else None
    if out_dir is None:
        return
    if runner is not None:
        started = time.perf_counter()
        index = runner.build_data_docs(out_dir)
        res.timings["data_docs_s"] = time.perf_counter() - started
        if index:
            res.evidence["data_docs"] = index
    res.write(out_dir)


def _prune_static(site: Path) -> None:
    """Drop the tutorial images GX copies into every site (3.4 MB of GIFs no page shows)."""
    images = site / "static" / "images"
    if not images.is_dir():
        return
    pages = "".join(p.read_text(errors="ignore") for p in site.rglob("*") if p.suffix in (".html", ".css"))
    for img in images.iterdir():
        if img.is_file() and img.name not in pages:
            img.unlink()


def _exception_message(info: Any) -> str | None:
    """GX's exception_info is {raised_exception, exception_message} or {metric_id: {...}}."""
    if not info:
        return None
    if isinstance(info, dict) and "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    if isinstance(info, dict):
        for v in info.values():
            msg = _exception_message(v)
            if msg:
                return msg
    return None
