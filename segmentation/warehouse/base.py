"""The warehouse interface shared by the DuckDB and PostgreSQL adapters.

Design notes:
- SQL text is always written with ``?`` placeholders and a ``params`` list; each adapter turns that
  into its driver's style (see ``PostgresWarehouse``), so library SQL is written once.
- Reads return ``pyarrow.Table``; writes take one. No pandas in the interface.
- Identifiers never reach SQL raw: ``ident``/``qualified`` validate with ``spec.check_identifier``.
- ``url`` is private: ``str``/``repr``/``safe_url`` and every ``WarehouseError`` show it redacted.
"""
from __future__ import annotations

import re

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Literal
from urllib.parse import unquote

import pyarrow as pa

from segmentation.spec import check_identifier

log = logging.getLogger(__name__)

Params = Sequence[Any] | None
WriteMode = Literal["replace", "append"]


class WarehouseError(RuntimeError):
    """A warehouse operation failed; the message names the table and the problem, never credentials."""


_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;\s])(?:password|passwd|pwd)=)([^&;\s]*)")


def _split_userinfo(url: str) -> tuple[str, str, str]:
    """(scheme + "://", userinfo, rest) split by hand: a password may hold '#', '/', '?' or '@',
    which make urlsplit put part of it into the host, path or fragment."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    at = rest.rfind("@")  # the host never holds '@'; a password may
    if at < 0:
        return scheme + sep, "", rest
    return scheme + sep, rest[:at], rest[at + 1:]


def redact_url(url: str) -> str:
    """Return ``url`` with its password (in the userinfo or as a ``password=`` parameter) replaced
    by ``***``. Never relies on the URL parsing cleanly, so a malformed URL cannot leak a secret."""
    head, userinfo, rest = _split_userinfo(str(url))
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else user
        out = f"{head}{userinfo}@{rest}"
    else:
        out = f"{head}{rest}"
    return _QUERY_SECRET.sub(lambda m: m.group(1) + "***", out)


def _secrets_of(url: str) -> list[str]:
    """The passwords in ``url`` as written and percent-decoded: what must never be shown."""
    _, userinfo, rest = _split_userinfo(str(url))
    found = [userinfo.partition(":")[2]] if ":" in userinfo else []
    found += [m.group(2) for m in _QUERY_SECRET.finditer(rest)]
    return [s for s in {x for f in found for x in (f, unquote(f))} if s]


def sql_snippet(sql: str) -> str:
    """``sql`` on one line, cut to 200 characters: enough to name the statement in an error."""
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= 200 else one_line[:197] + "..."


class Warehouse(ABC):
    """One connection to one warehouse database. Use ``connect()`` to get one.

    Calls outside ``transaction()`` autocommit, one statement at a time (``write_table`` is atomic on
    its own). Inside ``with wh.transaction() as tx:`` everything done through ``tx`` (or ``wh``: it is
    one connection) commits together, or rolls back when the block raises.
    ``close()`` releases the connection (and DuckDB's file lock); the next call reopens it.
    """

    dialect: str = ""

    def __init__(self, url: str) -> None:
        self._url = url
        self._tx: Transaction | None = None

    # -- identity and redaction ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """The full URL, password included: pass it to drivers, never print it."""
        return self._url

    @property
    def safe_url(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.safe_url!r})"

    def __str__(self) -> str:
        return self.safe_url

    def _scrub(self, text: str) -> str:
        """Remove the URL's password from ``text`` (driver messages may echo connection strings)."""
        text = text.replace(self._url, self.safe_url)
        for secret in _secrets_of(self._url):
            text = text.replace(secret, "***")
        return text

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        first = str(exc).strip()
        return WarehouseError(self._scrub(f"{what} ({self.dialect} {self.safe_url}): {first}"))

    # -- identifiers ----------------------------------------------------------------------------
    def ident(self, name: str) -> str:
        """``name`` validated as a plain identifier and double-quoted (case is kept as written)."""
        return '"' + check_identifier(name) + '"'

    def qualified(self, schema: str, table: str) -> str:
        return f"{self.ident(schema)}.{self.ident(table)}"

    # -- type mapping ---------------------------------------------------------------------------
    _TYPE_NAMES: dict[str, str] = {}  # logical -> this dialect's SQL type, filled by subclasses

    def sql_type(self, arrow_type: pa.DataType, column: str = "?") -> str:
        """The SQL type a column of ``arrow_type`` is created with (same mapping for both dialects,
        so a table written to either reads back with the same Arrow types)."""
        t = arrow_type
        if pa.types.is_dictionary(t):
            t = t.value_type
        names = self._TYPE_NAMES
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return names["text"]
        if pa.types.is_boolean(t):
            return names["bool"]
        if t in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()):
            return names["int"]
        if t in (pa.int64(), pa.uint32()):
            return names["bigint"]
        if pa.types.is_floating(t):
            return names["double"]
        if pa.types.is_decimal(t) and t.precision <= 38:
            return f"DECIMAL({t.precision},{t.scale})"
        if pa.types.is_date32(t) or pa.types.is_date64(t):
            return names["date"]
        if pa.types.is_timestamp(t):
            return names["timestamptz"] if t.tz else names["timestamp"]
        raise WarehouseError(
            f"column {column!r} has Arrow type {t} which has no SQL mapping; cast it to one of "
            "string, int8..int64, float, bool, date32, timestamp, decimal"
        )

    @staticmethod
    def _normalize_for_write(data: pa.Table) -> pa.Table:
        """Cast columns to the Arrow type the SQL column holds: dictionary -> values, timestamps ->
        microseconds (both databases store us; ns are truncated), tz-aware -> UTC, date64 -> date32,
        float16/32 -> float64."""
        cols = []
        for col in data.columns:
            t = col.type
            if pa.types.is_dictionary(t):
                col = col.cast(t.value_type)
                t = t.value_type
            if pa.types.is_timestamp(t) and (t.unit != "us" or (t.tz and t.tz != "UTC")):
                col = col.cast(pa.timestamp("us", tz="UTC" if t.tz else None), safe=False)
            elif pa.types.is_date64(t):
                col = col.cast(pa.date32())
            elif pa.types.is_floating(t) and t != pa.float64():
                # widen exactly here so both dialects store the same double
                col = col.cast(pa.float64())
            elif pa.types.is_string_view(t):
                col = col.cast(pa.string())
            cols.append(col)
        return pa.table(cols, names=data.column_names)

    # -- connection lifecycle -------------------------------------------------------------------
    @abstractmethod
    def _close(self) -> None: ...

    def close(self) -> None:
        """Release the connection (and DuckDB's file lock). Idempotent; a later call reopens."""
        if self._tx is not None:
            raise WarehouseError(f"close() inside an open transaction on {self.safe_url}")
        self._close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tx is None:
            self.close()

    # -- primitives each adapter implements -----------------------------------------------------
    @abstractmethod
    def _query(self, sql: str, params: Params) -> pa.Table: ...

    @abstractmethod
    def _execute(self, sql: str, params: Params) -> None: ...

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def _bulk_insert(self, schema: str, table: str, data: pa.Table) -> None:
        """Insert all rows of ``data`` (already normalized) into the existing table, by column name."""

    @abstractmethod
    def table_exists(self, schema: str, table: str) -> bool:
        """True if a table or view ``schema.table`` exists."""

    @abstractmethod
    def columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, type as the database names it) of ``schema.table``, in column order; [] if absent."""

    # -- public operations ----------------------------------------------------------------------
    def query(self, sql: str, params: Params = None) -> pa.Table:
        """Run a SELECT (``?`` placeholders, ``params`` positional) and return its rows as Arrow."""
        return self._query(sql, params)

    def execute(self, sql: str, params: Params = None) -> None:
        """Run one statement that returns no rows (``?`` placeholders, ``params`` positional)."""
        self._execute(sql, params)

    def create_schema(self, schema: str) -> None:
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {self.ident(schema)}", None)

    def write_table(self, schema: str, table: str, data: pa.Table, mode: WriteMode = "replace") -> int:
        """Write ``data`` to ``schema.table`` and return the number of rows written.

        replace: drop the table if it exists and create it with column types mapped from Arrow
        (the schema is created if needed). append: insert into the existing table by column name;
        the table must exist and have every column of ``data``. Bulk loaded in both dialects.
        Atomic on its own; inside ``transaction()`` it is part of that transaction.
        """
        if mode not in ("replace", "append"):
            raise ValueError(f"write_table mode must be 'replace' or 'append', not {mode!r}")
        if not isinstance(data, pa.Table):
            raise TypeError(f"write_table expects a pyarrow.Table, got {type(data).__name__}")
        name = self.qualified(schema, table)
        if data.num_columns == 0:
            raise WarehouseError(f"write_table {schema}.{table}: the Arrow table has no columns")
        for col in data.column_names:
            check_identifier(col, f"column of {schema}.{table}")
        if self._tx is None:  # make a lone write atomic: no half-replaced table on failure
            with self.transaction():
                return self.write_table(schema, table, data, mode)

        data = self._normalize_for_write(data)
        if mode == "replace":
            col_defs = ", ".join(
                f"{self.ident(f.name)} {self.sql_type(f.type, f.name)}" for f in data.schema
            )
            self.create_schema(schema)
            self._execute(f"DROP TABLE IF EXISTS {name}", None)
            self._execute(f"CREATE TABLE {name} ({col_defs})", None)
        else:
            existing = {c for c, _ in self.columns(schema, table)}
            if not existing:
                raise WarehouseError(f"write_table append: table {schema}.{table} does not exist")
            missing = [c for c in data.column_names if c not in existing]
            if missing:
                raise WarehouseError(
                    f"write_table append: table {schema}.{table} has no column(s) {missing}"
                )
            for f in data.schema:  # fail before loading on a type with no mapping
                self.sql_type(f.type, f.name)
        if data.num_rows:
            try:
                self._bulk_insert(schema, table, data)
            except WarehouseError as exc:
                raise WarehouseError(f"write_table {schema}.{table} ({mode}): {exc}") from exc
        log.debug("wrote %d rows to %s.%s (%s) on %s", data.num_rows, schema, table, mode, self)
        return data.num_rows

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Everything done through the yielded ``tx`` commits together; an exception rolls it all
        back and is re-raised. Not re-entrant: DuckDB has no savepoints, so nesting is refused."""
        if self._tx is not None:
            raise WarehouseError(f"a transaction is already open on {self.safe_url}")
        self._begin()
        tx = Transaction(self)
        self._tx = tx
        try:
            yield tx
        except BaseException:
            try:
                self._rollback()
            except Exception:  # the original error matters more than a failed rollback
                log.exception("rollback failed on %s", self)
            finally:
                self._tx, tx._closed = None, True
            raise
        try:
            self._commit()
        except BaseException:
            # A failed COMMIT (conflict, deferred constraint) must not leave a transaction open.
            with contextlib.suppress(Exception):
                self._rollback()
            raise
        finally:
            self._tx, tx._closed = None, True


class Transaction:
    """The handle ``Warehouse.transaction()`` yields: the warehouse's operations, all inside one
    transaction. Unusable once the ``with`` block has ended."""

    def __init__(self, warehouse: Warehouse) -> None:
        self._wh = warehouse
        self._closed = False

    def _live(self) -> Warehouse:
        if self._closed:
            raise WarehouseError(f"transaction on {self._wh.safe_url} is already finished")
        return self._wh

    @property
    def dialect(self) -> str:
        return self._wh.dialect

    def __repr__(self) -> str:
        return f"Transaction({self._wh!r}{', finished' if self._closed else ''})"

    def ident(self, name: str) -> str:
        return self._wh.ident(name)

    def qualified(self, schema: str, table: str) -> str:
        return self._wh.qualified(schema, table)

    def sql_type(self, arrow_type: pa.DataType, column: str = "?") -> str:
        return self._wh.sql_type(arrow_type, column)

    def query(self, sql: str, params: Params = None) -> pa.Table:
        return self._live().query(sql, params)

    def execute(self, sql: str, params: Params = None) -> None:
        self._live().execute(sql, params)

    def table_exists(self, schema: str, table: str) -> bool:
        return self._live().table_exists(schema, table)

    def columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        return self._live().columns(schema, table)

    def create_schema(self, schema: str) -> None:
        self._live().create_schema(schema)

    def write_table(self, schema: str, table: str, data: pa.Table, mode: WriteMode = "replace") -> int:
        return self._live().write_table(schema, table, data, mode)

