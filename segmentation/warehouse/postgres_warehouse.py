"""PostgreSQL adapter (psycopg 3): the team-scale warehouse."""
from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from segmentation.warehouse.base import Params, Warehouse, WarehouseError, sql_snippet

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

# A quoted string or identifier (copied as is, '%' doubled), a '?' placeholder, or a bare '%'.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")


def to_pyformat(sql: str) -> str:
    """Turn our ``?`` placeholders into psycopg's ``%s`` (and escape literal ``%`` as ``%%``).

    ``?`` inside quoted strings or identifiers is left alone. Our SQL never uses PostgreSQL's
    jsonb ``?`` operators, which this would misread as placeholders.
    """

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "?":
            return "%s"
        return tok.replace("%", "%%")

    return _TOKENS.sub(sub, sql)


def conninfo(url: str) -> str:
    """The libpq URI for ``url`` (SQLAlchemy's ``postgresql+psycopg://`` spelling accepted)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise WarehouseError("not a PostgreSQL URL (expected postgresql://user:pass@host:port/db)")
    return "postgresql://" + rest


# PostgreSQL type name -> the Arrow type its column reads as.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "char": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "uuid": pa.string(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    # The session runs in UTC, so psycopg hands out UTC datetimes; label the column to match.
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.duration("us"),
}


class PostgresWarehouse(Warehouse):
    """PostgreSQL through one psycopg 3 connection in autocommit mode; ``transaction()`` wraps
    BEGIN/COMMIT around it. Loads use ``COPY ... FROM STDIN`` (CSV), reads build Arrow columns
    from the fetched rows with types taken from the result's column types."""

    dialect = "postgres"
    _TYPE_NAMES = {
        "text": "TEXT",
        "bool": "BOOLEAN",
        "int": "INTEGER",
        "bigint": "BIGINT",
        "double": "DOUBLE PRECISION",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
    }

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._conninfo = conninfo(url)
        self._conn: Any = None  # psycopg.Connection, imported lazily

    # -- connection -----------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is not None and (self._conn.closed or self._conn.broken) and self._tx is None:
            self._conn = None  # e.g. the server restarted between two nightly calls: reconnect
        if self._conn is None:
            import psycopg
            from psycopg.types.string import TextLoader

            extra: dict[str, Any] = {"autocommit": True, "client_encoding": "UTF8"}
            if "connect_timeout" not in self._conninfo:
                extra["connect_timeout"] = 10  # a wrong host fails in seconds, not minutes
            if "application_name" not in self._conninfo:
                extra["application_name"] = "segmentation"
            error: WarehouseError | None = None
            try:
                conn = psycopg.connect(self._conninfo, **extra)
                conn.execute("SET TIME ZONE 'UTC'")
            except psycopg.Error as exc:
                error = self._error("cannot connect", exc)
            if error is not None:
                # Raised outside the except block so the driver's exception is not even chained
                # as __context__: only our scrubbed message travels into logs.
                raise error
            # JSON and UUID values come back as their text, like DuckDB gives them.
            for name in ("json", "jsonb", "uuid"):
                conn.adapters.register_loader(name, TextLoader)
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    # -- statements -----------------------------------------------------------------------------
    def _run(self, sql: str, params: Params, what: str, fetch: bool) -> pa.Table | None:
        import psycopg

        conn = self._connection()
        text = to_pyformat(sql) if params is not None else sql
        try:
            with conn.cursor() as cur:
                cur.execute(text, list(params) if params is not None else None)
                if not fetch:
                    return None
                if cur.description is None:
                    return pa.table({})
                rows = cur.fetchall()
                return _to_arrow(conn, cur.description, rows)
        except psycopg.Error as exc:
            raise self._error(f"{what}: {sql_snippet(sql)}", exc) from exc

    def _query(self, sql: str, params: Params) -> pa.Table:
        result = self._run(sql, params, "query failed", fetch=True)
        assert result is not None
        return result

    def _execute(self, sql: str, params: Params) -> None:
        self._run(sql, params, "statement failed", fetch=False)

    def _begin(self) -> None:
        self._execute("BEGIN", None)

    def _commit(self) -> None:
        self._execute("COMMIT", None)

    def _rollback(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._execute("ROLLBACK", None)

    def _bulk_insert(self, schema: str, table: str, data: pa.Table) -> None:
        import psycopg
        import pyarrow.csv as pacsv

        # CSV with every non-null value quoted: an unquoted empty field is NULL, "" is an empty
        # string, so nulls survive. Arrow writes the CSV in C; COPY parses it server-side.
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
        cols = ", ".join(self.ident(c) for c in data.column_names)
        copy_sql = f"COPY {self.qualified(schema, table)} ({cols}) FROM STDIN WITH (FORMAT csv)"
        conn = self._connection()
        try:
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for batch in data.to_batches(max_chunksize=64_000):
                    buf = io.BytesIO()
                    pacsv.write_csv(batch, buf, options)
                    copy.write(buf.getbuffer())
        except psycopg.Error as exc:
            raise self._error(f"loading {data.num_rows} rows into {schema}.{table} failed", exc) from exc

    # -- catalog --------------------------------------------------------------------------------
    def table_exists(self, schema: str, table: str) -> bool:
        self.qualified(schema, table)  # validate even though the lookup is parametrized
        rows = self._query(
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ? AND c.relname = ? AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            [schema, table],
        )
        return rows.num_rows > 0

    def columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        self.qualified(schema, table)
        rows = self._query(
            "SELECT a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type "
            "FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ? AND c.relname = ? AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            [schema, table],
        ).to_pylist()
        return [(r["name"], r["type"]) for r in rows]


def _to_arrow(conn: Any, description: Any, rows: list[tuple[Any, ...]]) -> pa.Table:
    """Build an Arrow table column by column from fetched rows, typed by the result's columns."""
    columns: list[tuple[Any, ...]] = list(zip(*rows)) if rows else [() for _ in description]
    arrays = []
    for col, values in zip(description, columns):
        info = conn.adapters.types.get(col.type_code)
        name = info.name if info is not None else ""
        arrays.append(_column(name, col, list(values)))
    return pa.table(arrays, names=[c.name for c in description])


def _column(type_name: str, col: Any, values: list[Any]) -> pa.Array:
    if type_name == "numeric":
        # Declared NUMERIC(p, s) keeps its exact type; an undeclared one (avg(), sum() of
        # bigint) has no fixed scale, so it becomes a double like DuckDB returns.
        if col.precision is not None and col.scale is not None and col.precision <= 38:
            return pa.array(values, pa.decimal128(col.precision, col.scale))
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    arrow_type = _ARROW_TYPES.get(type_name)
    if arrow_type is not None:
        return pa.array(values, arrow_type)
    try:  # anything else (arrays, enums, ...): let Arrow infer, else fall back to text
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        to_str: Callable[[Any], str | None] = lambda v: None if v is None else str(v)  # noqa: E731
        return pa.array([to_str(v) for v in values], pa.string())
