"""Warehouse adapters: one small interface over DuckDB (embedded, the default) and PostgreSQL.

    from segmentation.warehouse import connect
    with connect() as wh:                      # SEGMENT_WAREHOUSE_URL, else the local DuckDB file
        wh.write_table("segments", "t", arrow_table)
        rows = wh.query("SELECT * FROM segments.t WHERE id = ?", [1])

SQL uses ``?`` placeholders for both dialects; ``wh.ident``/``wh.qualified`` quote identifiers.
"""
from __future__ import annotations

import os

from segmentation.warehouse.base import Transaction, Warehouse, WarehouseError, redact_url

__all__ = ["Transaction", "Warehouse", "WarehouseError", "connect", "default_url", "redact_url"]


def default_url() -> str:
    """``SEGMENT_WAREHOUSE_URL``, else ``<SEGMENT_DATA_DIR or ./.data>/warehouse.duckdb``."""
    url = os.environ.get("SEGMENT_WAREHOUSE_URL")
    if url:
        return url
    data_dir = os.environ.get("SEGMENT_DATA_DIR") or ".data"
    # An absolute data dir gives duckdb:////abs/...: four slashes mean an absolute path.
    return f"duckdb:///{data_dir.rstrip('/') or '/'}/warehouse.duckdb"


def connect(url: str | None = None) -> Warehouse:
    """Open the warehouse at ``url`` (default: ``default_url()``).

    ``duckdb:///path.duckdb`` (relative), ``duckdb:////abs/path.duckdb``, ``duckdb:///:memory:``;
    ``postgresql://user:pass@host:port/db`` (also ``postgres://``, ``postgresql+psycopg://``).
    DuckDB opens its file on first use; PostgreSQL connects now, so bad credentials or an
    unreachable server fail here with a ``WarehouseError`` that never shows the password.
    """
    url = url or default_url()
    scheme = url.partition("://")[0].lower()
    if scheme == "duckdb":
        from segmentation.warehouse.duckdb_warehouse import DuckDBWarehouse

        return DuckDBWarehouse(url)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from segmentation.warehouse.postgres_warehouse import PostgresWarehouse

        wh = PostgresWarehouse(url)
        wh._connection()  # fail fast on credentials and reachability
        return wh
    raise WarehouseError(
        f"unsupported warehouse URL {redact_url(url)!r}: use duckdb:///path.duckdb or "
        "postgresql://user:pass@host:port/db"
    )
