"""DuckDB adapter: a single-file embedded warehouse (the one-machine default)."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from segmentation.warehouse.base import Params, Warehouse, WarehouseError, sql_snippet

PREFIX = "duckdb:///"


def duckdb_path(url: str) -> str:
    """The database path of a ``duckdb:///`` URL: ``duckdb:///rel/x.duckdb`` is relative to the
    working directory, ``duckdb:////abs/x.duckdb`` absolute, ``duckdb:///:memory:`` in memory."""
    if not url.startswith(PREFIX) or len(url) == len(PREFIX):
        raise WarehouseError(
            f"not a DuckDB URL: {url!r}; use duckdb:///relative/path.duckdb, "
            "duckdb:////absolute/path.duckdb or duckdb:///:memory:"
        )
    return url[len(PREFIX):]


class DuckDBWarehouse(Warehouse):
    """DuckDB file warehouse. The connection opens lazily on first use and ``close()`` releases the
    file lock, so dbt (which opens the same file) can run between our calls in one process.
    A ``:memory:`` database is lost on ``close()``."""

    dialect = "duckdb"
    _TYPE_NAMES = {
        "text": "VARCHAR",
        "bool": "BOOLEAN",
        "int": "INTEGER",
        "bigint": "BIGINT",
        "double": "DOUBLE",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
    }

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = duckdb_path(url)
        self._con: Any = None  # duckdb.DuckDBPyConnection, imported lazily

    @property
    def catalog(self) -> str:
        """DuckDB's name for the database: the file name up to its first dot (``memory``)."""
        return "memory" if self.path == ":memory:" else Path(self.path).name.split(".")[0]

    def _check_schema(self, schema: str) -> None:
        # DuckDB cannot tell schema "x" from the catalog of file x.duckdb: every statement on
        # x.table fails as ambiguous. Say so up front instead of mid-publish.
        if schema.lower() == self.catalog.lower():
            raise WarehouseError(
                f"schema {schema!r} has the same name as the DuckDB database file {self.path!r}, "
                "which DuckDB cannot tell apart: rename the file or use another schema"
            )

    def qualified(self, schema: str, table: str) -> str:
        name = super().qualified(schema, table)
        self._check_schema(schema)
        return name

    def create_schema(self, schema: str) -> None:
        self.ident(schema)
        self._check_schema(schema)
        super().create_schema(schema)

    def _connection(self) -> Any:
        if self._con is None:
            import duckdb

            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                con = duckdb.connect(self.path)
                # TIMESTAMPTZ values read back as UTC whatever the machine's zone is.
                con.execute("SET TimeZone = 'UTC'")
            except duckdb.Error as exc:
                raise self._error(f"cannot open DuckDB database {self.path}", exc) from None
            self._con = con
        return self._con

    def _close(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            con.close()

    def _query(self, sql: str, params: Params) -> pa.Table:
        import duckdb

        con = self._connection()
        try:
            rel = con.sql(sql, params=list(params) if params is not None else None)
            if rel is None:  # a statement that returns nothing
                return pa.table({})
            table = rel.to_arrow_table()
        except duckdb.Error as exc:
            raise self._error(f"query failed: {sql_snippet(sql)}", exc) from exc
        return _plain_strings(table)

    def _execute(self, sql: str, params: Params) -> None:
        import duckdb

        try:
            self._connection().execute(sql, list(params) if params is not None else None)
        except duckdb.Error as exc:
            raise self._error(f"statement failed: {sql_snippet(sql)}", exc) from exc

    def _begin(self) -> None:
        self._execute("BEGIN TRANSACTION", None)

    def _commit(self) -> None:
        self._execute("COMMIT", None)

    def _rollback(self) -> None:
        if self._con is not None:
            self._execute("ROLLBACK", None)

    def _bulk_insert(self, schema: str, table: str, data: pa.Table) -> None:
        import duckdb

        con = self._connection()
        # DuckDB scans the registered Arrow table in place: one INSERT ... SELECT, no row loop.
        view = f"_seg_arrow_{uuid.uuid4().hex}"
        cols = ", ".join(self.ident(c) for c in data.column_names)
        con.register(view, data)
        try:
            con.execute(
                f"INSERT INTO {self.qualified(schema, table)} ({cols}) SELECT {cols} FROM {view}"
            )
        except duckdb.Error as exc:
            raise self._error(f"loading {data.num_rows} rows into {schema}.{table} failed", exc) from exc
        finally:
            try:
                con.unregister(view)
            except duckdb.Error:  # transaction aborted: the rollback drops the registration too
                pass

    def table_exists(self, schema: str, table: str) -> bool:
        self.qualified(schema, table)  # validate even though the lookup is parametrized
        rows = self._query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        )
        return rows.num_rows > 0

    def columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        self.qualified(schema, table)
        rows = self._query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [schema, table],
        ).to_pylist()
        return [(r["column_name"], r["data_type"]) for r in rows]


def _plain_strings(table: pa.Table) -> pa.Table:
    """DuckDB may hand out string_view columns; most consumers (pandas, GX) expect plain string."""
    if not any(pa.types.is_string_view(f.type) for f in table.schema):
        return table
    return table.cast(
        pa.schema(
            pa.field(f.name, pa.string(), f.nullable) if pa.types.is_string_view(f.type) else f
            for f in table.schema
        )
    )
