"""Small helpers the Airflow DAG needs, kept in the library so they are unit-tested without Airflow.

The warehouse URL is resolved inside each task (never passed through XCom: it may hold a password):
an Airflow Connection (``segment_warehouse`` by default, or ``$SEGMENT_WAREHOUSE_CONN_ID``), else
``$SEGMENT_WAREHOUSE_URL``, else the local DuckDB file.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_CONN_ID = "segment_warehouse"
_LIBPQ_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name",
                  "options", "target_session_attrs")


def url_from_connection(conn: Any) -> str:
    """An Airflow Connection -> warehouse URL. Postgres connections map field by field; a DuckDB
    connection names its file in ``host`` (``duckdb://`` URI: AIRFLOW_CONN_X='duckdb://%2Fdata%2Fw.duckdb')
    or in the extra ``{"path": ...}``."""
    ctype = (conn.conn_type or "").lower()
    if ctype in ("postgres", "postgresql"):
        auth = ""
        if conn.login or conn.password:
            auth = quote(conn.login or "", safe="")
            if conn.password:
                auth += ":" + quote(conn.password, safe="")
            auth += "@"
        host = conn.host or "127.0.0.1"
        port = f":{conn.port}" if conn.port else ""
        # libpq options kept from the Connection's extras (sslmode, sslrootcert, ...)
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        options = {k: v for k, v in extra.items() if k in _LIBPQ_OPTIONS and v not in (None, "")}
        query = ("?" + urlencode(options)) if options else ""
        return f"postgresql://{auth}{host}{port}/{conn.schema or 'postgres'}{query}"
    if ctype == "duckdb":
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        path = extra.get("path") or conn.host or conn.schema
        if not path:
            raise ValueError(f"connection {conn.conn_id!r}: a duckdb connection needs the file path in host or extra.path")
        return f"duckdb:///{path}"
    raise ValueError(
        f"connection {conn.conn_id!r} has type {conn.conn_type!r}; the warehouse must be a 'postgres' or 'duckdb' connection"
    )


def _not_found(exc: BaseException) -> bool:
    """Airflow's "conn_id isn't defined" (``AirflowNotFoundException``, from ``airflow.exceptions``
    or the task SDK), or a plain lookup miss (``KeyError``) from another getter."""
    return isinstance(exc, LookupError) or any(c.__name__ == "AirflowNotFoundException" for c in type(exc).__mro__)


def resolve_warehouse_url(get_connection=None) -> str:
    """Connection ``$SEGMENT_WAREHOUSE_CONN_ID`` (default ``segment_warehouse``) if it exists, else the
    environment / default URL (``segmentation.warehouse.default_url``)."""
    from segmentation.warehouse import default_url

    conn_id = os.environ.get("SEGMENT_WAREHOUSE_CONN_ID", DEFAULT_CONN_ID)
    if get_connection is not None:
        try:
            conn = get_connection(conn_id)
        except Exception as exc:
            # The Connection is optional: not defined -> environment. Any other failure (a secrets
            # backend down, a malformed definition) must fail the task: falling back would send the
            # run to the local DuckDB file of whichever worker runs it, and report success.
            if not _not_found(exc):
                raise
            conn = None
        if conn is not None:
            return url_from_connection(conn)
    return default_url()


def run_window(params: dict[str, Any], interval_start: dt.datetime | None, interval_end: dt.datetime | None) -> tuple[dt.date, dt.datetime]:
    """(run date D, as_of) for a DAG run: the ``as_of_date`` param of a manual run wins, else the
    data interval [D, D+1) of a scheduled run."""
    override = params.get("as_of_date")
    if override:
        d = dt.date.fromisoformat(str(override))
        return d, dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    if interval_start is None or interval_end is None:
        raise ValueError("this DAG run has no data interval; trigger it with the as_of_date param")
    return interval_start.date(), interval_end
