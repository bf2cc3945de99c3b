"""Step 2 of a nightly run: build one row of features per customer with dbt, in the warehouse.

    from segmentation.features import build_features
    relation = build_features("duckdb:///.data/warehouse.duckdb", datetime(2011, 6, 1))
    # 'features.customer_features'

dbt runs in-process (``dbtRunner``): ``dbt build`` of the ``customer_features`` model and its tests,
with ``--vars {as_of: ...}`` and the target chosen by the URL's dialect. The connection reaches dbt
only through environment variables read by ``dags/dbt/profiles.yml`` (the password through
``DBT_ENV_SECRET_SEGMENT_PG_PASSWORD``, which dbt scrubs from its logs), set for the duration of
the call. dbt's target and log folders live in a temporary folder (or ``work_dir``), never in the
repository. dbt's events are forwarded to the ``segmentation.features.dbt`` logger.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from segmentation.spec import Spec, load_spec

log = logging.getLogger(__name__)
dbt_log = logging.getLogger(__name__ + ".dbt")

MODEL = "customer_features"
DEFAULT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dags" / "dbt"
PROJECT_DIR_ENV = "SEGMENT_DBT_PROJECT_DIR"

# Environment variables profiles.yml reads; all of them are set (or cleared) for each run.
_PROFILE_ENV = (
    "SEGMENT_DBT_TARGET",
    "SEGMENT_DBT_DUCKDB_PATH",
    "SEGMENT_PG_HOST",
    "SEGMENT_PG_PORT",
    "SEGMENT_PG_USER",
    "SEGMENT_PG_DBNAME",
    "SEGMENT_PG_SSLMODE",
    "SEGMENT_PG_PASSWORD",
    "DBT_ENV_SECRET_SEGMENT_PG_PASSWORD",
)
_NO_TRACKING = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "False", "DO_NOT_TRACK": "1"}
_QUIET_EVENTS = {"LogStartLine", "NodeStart", "ConcurrencyLine", "LogHookStartLine"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}

# os.environ and dbt's globals are process-wide: one dbt invocation at a time.
_DBT_LOCK = threading.Lock()


class FeatureBuildError(RuntimeError):
    """The features could not be built. ``node`` is dbt's failing node (e.g.
    ``test.segmentation.unique_customer_features_customer_id``) when there is one, ``dbt_message``
    its message, ``failures`` every failing (node, message) pair."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        dbt_message: str | None = None,
        failures: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.dbt_message = dbt_message
        self.failures = failures or []


def as_of_text(as_of: dt.datetime | dt.date | str) -> str:
    """``as_of`` as the naive UTC timestamp text dbt's ``var('as_of')`` expects.

    An aware datetime (Airflow's ``data_interval_end``) is converted to UTC; a naive one is taken as
    UTC already (the raw timestamps are naive UTC); a date means its midnight.
    """
    if isinstance(as_of, str):
        try:
            as_of = dt.datetime.fromisoformat(as_of.strip())
        except ValueError:
            raise FeatureBuildError(f"as_of {as_of!r} is not an ISO date or timestamp") from None
    if isinstance(as_of, dt.datetime):
        if as_of.tzinfo is not None and as_of.utcoffset() is not None:
            as_of = as_of.astimezone(dt.timezone.utc).replace(tzinfo=None)
    elif isinstance(as_of, dt.date):
        as_of = dt.datetime.combine(as_of, dt.time())
    else:
        raise FeatureBuildError(f"as_of must be a datetime, a date or an ISO string, not {type(as_of).__name__}")
    text = as_of.strftime("%Y-%m-%d %H:%M:%S")
    return text + (f".{as_of.microsecond:06d}" if as_of.microsecond else "")


def dbt_connection(url: str) -> tuple[str, dict[str, str], list[str]]:
    """(dbt target, environment for profiles.yml, secrets to scrub) for a warehouse URL."""
    from segmentation.warehouse import redact_url

    scheme = url.partition("://")[0].lower()
    if scheme == "duckdb":
        from segmentation.warehouse.duckdb_warehouse import duckdb_path

        path = duckdb_path(url)
        if path == ":memory:" or not path:
            raise FeatureBuildError(
                "dbt cannot see an in-memory DuckDB database: use a file, duckdb:///path/warehouse.duckdb"
            )
        return "duckdb", {"SEGMENT_DBT_TARGET": "duckdb", "SEGMENT_DBT_DUCKDB_PATH": str(Path(path).resolve())}, []
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise FeatureBuildError(f"malformed PostgreSQL URL {redact_url(url)!r}") from None
        user = unquote(parts.username or "") or getpass.getuser()
        password = unquote(parts.password or "")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        ignored = sorted(set(query) - {"sslmode"})
        if ignored:
            log.warning("dbt profile ignores these PostgreSQL URL parameters: %s", ", ".join(ignored))
        env = {
            "SEGMENT_DBT_TARGET": "postgres",
            "SEGMENT_PG_HOST": unquote(parts.hostname or "") or "localhost",
            "SEGMENT_PG_PORT": str(port or 5432),
            "SEGMENT_PG_USER": user,
            "SEGMENT_PG_DBNAME": unquote(parts.path.lstrip("/")) or user,
            "SEGMENT_PG_SSLMODE": query.get("sslmode", "prefer"),
            "DBT_ENV_SECRET_SEGMENT_PG_PASSWORD": password,
        }
        secrets = [s for s in {password, parts.password or ""} if s]
        return "postgres", env, secrets
    raise FeatureBuildError(
        f"unsupported warehouse URL {redact_url(url)!r}: use duckdb:///path.duckdb or postgresql://user:pass@host:port/db"
    )


def _project_dir(project_dir: str | Path | None) -> Path:
    chosen = project_dir or os.environ.get(PROJECT_DIR_ENV) or DEFAULT_PROJECT_DIR
    path = Path(chosen).resolve()
    if not (path / "dbt_project.yml").is_file() or not (path / "profiles.yml").is_file():
        raise FeatureBuildError(
            f"dbt project not found at {path} (needs dbt_project.yml and profiles.yml): pass project_dir= "
            f"or set {PROJECT_DIR_ENV} to the repository's dags/dbt folder"
        )
    return path


def _spec(spec: Spec | str | Path | None) -> Spec:
    if isinstance(spec, Spec):
        return spec
    return load_spec(spec)


def _dbt_vars(spec: Spec, as_of: str) -> dict[str, str]:
    out = {
        "as_of": as_of,
        "features_schema": spec.features_relation.schema,
        "features_table": spec.features_relation.table,
    }
    sources = {k: spec.sources[k] for k in ("transactions", "customers") if k in spec.sources}
    schemas = {r.schema for r in sources.values()}
    if len(schemas) > 1:
        raise FeatureBuildError(
            f"{spec.path}: sources transactions and customers must live in one schema for the dbt "
            f"project, got {sorted(schemas)}"
        )
    if schemas:
        out["raw_schema"] = schemas.pop()
    for key, rel in sources.items():
        out[f"{key}_table"] = rel.table
    return out


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*_PROFILE_ENV, *_NO_TRACKING, *values)}
    try:
        for k in _PROFILE_ENV:
            os.environ.pop(k, None)
        os.environ.update(_NO_TRACKING)
        os.environ.update(values)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scrubber(secrets: list[str]):
    def scrub(text: Any) -> str:
        text = str(text)
        for s in secrets:
            text = text.replace(s, "***")
        return text

    return scrub


def build_features(
    url: str | None,
    as_of: dt.datetime | dt.date | str,
    spec: Spec | str | Path | None = None,
    *,
    project_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
) -> str:
    """Build the features relation as of ``as_of`` (the run's interval end) and return its name.

    ``url``: the warehouse (default ``segmentation.warehouse.default_url()``); ``spec``: a Spec or a
    spec file (default: the demo spec); ``project_dir``: the dbt project (default ``dags/dbt`` of this
    repository, or ``$SEGMENT_DBT_PROJECT_DIR``); ``work_dir``: keep dbt's target/ and logs/ there
    instead of a temporary folder that is removed afterwards.

    Raises ``FeatureBuildError`` naming dbt's failing node and message when dbt fails (a failing
    test included: the table is then built but must not be used), and when the relation's columns
    are not exactly the spec's entity key and features, in order.
    """
    from segmentation.warehouse import default_url, redact_url

    url = url or default_url()
    spec = _spec(spec)
    project = _project_dir(project_dir)
    if not any(project.glob(f"**/{MODEL}.sql")) and not any(project.glob(f"**/{MODEL}.py")):
        raise FeatureBuildError(
            f"the dbt project {project} has no model named {MODEL} (a {MODEL}.sql under its models/): the "
            f"pipeline builds that model, so name your features model {MODEL} and have it write "
            f"{spec.features_relation.qualified}"
        )
    target, env, secrets = dbt_connection(url)
    scrub = _scrubber(secrets)
    dbt_vars = _dbt_vars(spec, as_of_text(as_of))
    relation = spec.features_relation

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segment-dbt-")))
        work.mkdir(parents=True, exist_ok=True)
        args = [
            "build",
            "--select", MODEL,
            "--project-dir", str(project),
            "--profiles-dir", str(project),
            "--target", target,
            "--vars", json.dumps(dbt_vars),
            "--target-path", str(work / "target"),
            "--log-path", str(work / "logs"),
            "--log-level", "none",  # console: dbt's events go to our logger instead (_invoke)
            "--log-level-file", "debug",
            "--no-use-colors",
            "--no-send-anonymous-usage-stats",
            "--no-version-check",
            "--no-partial-parse",
        ]
        log.info(
            "building %s as of %s with dbt (target %s, %s, project %s)",
            relation.qualified, dbt_vars["as_of"], target, redact_url(url), project,
        )
        with _DBT_LOCK, _environment(env):
            try:
                result = _invoke(args, scrub)
            finally:
                if target == "duckdb":
                    _release_duckdb()
    _raise_on_failure(result, scrub, relation.qualified)

    check_features_relation(url, spec, project)
    log.info("built %s as of %s in %.1f s", relation.qualified, dbt_vars["as_of"], time.perf_counter() - started)
    return relation.qualified


def check_features_relation(url: str | None, spec: Spec, project: Path | None = None) -> None:
    """Raise ``FeatureBuildError`` unless the features relation's columns are exactly the spec's
    entity key and features, in the spec's order."""
    from segmentation.warehouse import connect

    relation = spec.features_relation
    expected = [spec.entity_key, *spec.feature_names]
    wh = connect(url)
    try:
        actual = [name for name, _ in wh.columns(relation.schema, relation.table)]
    finally:
        wh.close()
    if actual == expected:
        return
    missing = [c for c in expected if c not in actual]
    extra = [c for c in actual if c not in expected]
    detail = []
    if not actual:
        detail.append("the relation does not exist")
    if missing:
        detail.append(f"missing {missing}")
    if extra:
        detail.append(f"not in the spec {extra}")
    if not missing and not extra and actual:
        detail.append(f"order differs: got {actual}")
    raise FeatureBuildError(
        f"{relation.qualified} does not match the spec {spec.path or spec.name}: "
        f"expected columns {expected}; {'; '.join(detail)}. "
        f"Keep the dbt model ({project or DEFAULT_PROJECT_DIR}/models) and the spec's features in step."
    )


def _invoke(args: list[str], scrub) -> Any:
    from dbt.cli.main import dbtRunner

    def forward(event: Any) -> None:
        info = event.info
        level = _LEVELS.get(info.level, logging.DEBUG)
        if info.name in _QUIET_EVENTS:  # "N of 25 START ..." for every node: detail, not news
            level = logging.DEBUG
        if level >= logging.INFO and dbt_log.isEnabledFor(level) and info.msg:
            dbt_log.log(level, "%s", scrub(info.msg))

    try:
        return dbtRunner(callbacks=[forward]).invoke(args)
    except Exception as exc:  # dbtRunner reports most failures in its result; this is the rest
        raise FeatureBuildError(f"dbt could not run: {scrub(exc)}") from None


def _release_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb keeps open after an in-process run.

    dbt-duckdb holds its database in a process-wide environment that outlives ``invoke`` (it closes
    at interpreter exit), which keeps the file locked against every other process: the next Airflow
    task, Great Expectations in a subprocess, a user's DuckDB shell. Close it now.
    """
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # pragma: no cover - dbt-duckdb is a dependency
        return
    with DuckDBConnectionManager._LOCK:
        env, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
    if env is not None:
        try:
            env.close()
        except Exception:  # closing is best effort; the lock goes at exit at the latest
            log.warning("could not close dbt-duckdb's database handle", exc_info=True)


def _raise_on_failure(result: Any, scrub, relation: str) -> None:
    if result.success:
        return
    failures: list[tuple[str, str]] = []
    for r in getattr(result.result, "results", None) or []:
        status = str(getattr(r.status, "value", r.status)).lower()
        if status in ("error", "fail", "runtime error"):
            node = getattr(getattr(r, "node", None), "unique_id", "?")
            failures.append((node, scrub(r.message or status).strip()))
    if failures:
        node, message = failures[0]
        more = f" (and {len(failures) - 1} more: {', '.join(n for n, _ in failures[1:])})" if len(failures) > 1 else ""
        raise FeatureBuildError(
            f"dbt build of {relation} failed at {node}: {message}{more}",
            node=node,
            dbt_message=message,
            failures=failures,
        )
    exc = result.exception
    message = scrub(exc).strip() if exc is not None else "dbt reported failure without a message"
    raise FeatureBuildError(f"dbt build of {relation} failed: {message}", dbt_message=message)
