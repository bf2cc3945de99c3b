"""The demo warehouse: the UCI "Online Retail" invoice lines loaded into schema ``raw``.

    from segmentation.demo import init_demo_warehouse
    init_demo_warehouse("duckdb:///.data/warehouse.duckdb")
    # {'transactions': 541909, 'customers': 4372, 'guest_lines': 135080, 'loaded': True}

Two tables stand in for a CRM's raw tables:

- ``raw.transactions``: every invoice line, as in the source (guest lines and cancellations
  included): invoice_no, stock_code, description TEXT; quantity BIGINT; invoice_date TIMESTAMP;
  unit_price DOUBLE; customer_id TEXT (``"12346"``, NULL for guest checkouts); country TEXT.
- ``raw.customers``: one row per customer id seen in the lines: customer_id, country (the country of
  most of the customer's lines, ties broken by the alphabetically first), first_purchase_at (the
  first non-cancelled line; NULL for the 33 customers whose lines are all cancellations).

Both are written in one transaction: a failed load leaves the previous tables as they were.
The data file and its licence: ``segmentation/demo_data/README.md``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

DEFAULT_DATA_PATH = Path(__file__).parent / "demo_data" / "online_retail.parquet"
RAW_SCHEMA = "raw"
TRANSACTIONS_TABLE = "transactions"
CUSTOMERS_TABLE = "customers"

# The UCI file's own column names -> ours (the shipped copy already uses ours).
SOURCE_COLUMNS = {
    "InvoiceNo": "invoice_no",
    "StockCode": "stock_code",
    "Description": "description",
    "Quantity": "quantity",
    "InvoiceDate": "invoice_date",
    "UnitPrice": "unit_price",
    "CustomerID": "customer_id",
    "Country": "country",
}
TRANSACTION_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        pa.field("stock_code", pa.string()),
        pa.field("description", pa.string()),
        pa.field("quantity", pa.int64()),
        pa.field("invoice_date", pa.timestamp("us"), nullable=False),
        pa.field("unit_price", pa.float64()),
        pa.field("customer_id", pa.string()),
        pa.field("country", pa.string()),
    ]
)


class DemoDataError(ValueError):
    """The demo data file is missing or not shaped like the Online Retail data; the message says how."""


def read_transactions(data_path: str | Path | None = None) -> pa.Table:
    """Read the Online Retail lines as ``raw.transactions`` holds them (see the module docstring).

    Accepts the shipped snake_case copy or the original UCI column names. ``customer_id`` may be a
    float (``12346.0``), an integer or text; it comes out as text without a decimal part.
    """
    import pyarrow.parquet as pq

    path = Path(data_path) if data_path is not None else DEFAULT_DATA_PATH
    if not path.is_file():
        raise DemoDataError(
            f"demo data file {path} does not exist; it ships with the package as "
            f"{DEFAULT_DATA_PATH} (reinstall the package, or pass data_path=<a copy of the UCI "
            "Online Retail data as Parquet>)"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DemoDataError(f"demo data file {path} is not a readable Parquet file: {exc}") from exc

    table = table.rename_columns([SOURCE_COLUMNS.get(c, c) for c in table.column_names])
    missing = [f.name for f in TRANSACTION_SCHEMA if f.name not in table.column_names]
    if missing:
        raise DemoDataError(
            f"demo data file {path} lacks column(s) {missing}; expected the Online Retail columns "
            f"{list(SOURCE_COLUMNS)} (or their snake_case names {list(SOURCE_COLUMNS.values())}), "
            f"found {table.column_names}"
        )
    if table.num_rows == 0:
        raise DemoDataError(f"demo data file {path} has no rows")

    columns = []
    for field in TRANSACTION_SCHEMA:
        col = table.column(field.name)
        if field.name == "customer_id":
            col = _customer_ids_as_text(col, path)
        else:
            col = _cast(col, field.type, field.name, path)
        if not field.nullable and col.null_count:
            raise DemoDataError(f"demo data file {path}: column {field.name!r} has {col.null_count} null values")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=TRANSACTION_SCHEMA)


def _cast(col: pa.ChunkedArray, to: pa.DataType, name: str, path: Path) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if t == to:
        return col
    if pa.types.is_timestamp(to) and not pa.types.is_timestamp(t):
        raise DemoDataError(f"demo data file {path}: column {name!r} is {t}, expected a timestamp")
    if pa.types.is_timestamp(t) and t.tz:  # an aware timestamp: keep the UTC wall clock
        col = col.cast(pa.timestamp(t.unit, tz="UTC")).cast(pa.timestamp(t.unit))
    try:
        return col.cast(to)  # safe cast: 1.5 -> int64 is an error, not a silent truncation
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DemoDataError(f"demo data file {path}: column {name!r} ({t}) cannot be read as {to}: {exc}") from exc


def _customer_ids_as_text(col: pa.ChunkedArray, path: Path) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_floating(t) or pa.types.is_integer(t):
        try:
            ints = col.cast(pa.int64())  # safe: 12346.5 raises instead of becoming "12346"
        except pa.ArrowInvalid as exc:
            raise DemoDataError(
                f"demo data file {path}: column 'customer_id' holds non-integer numbers: {exc}"
            ) from exc
        return ints.cast(pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = pc.utf8_trim_whitespace(col.cast(pa.string()))
        text = pc.replace_substring_regex(text, pattern=r"\.0+$", replacement="")  # "12346.0" -> "12346"
        return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    raise DemoDataError(f"demo data file {path}: column 'customer_id' is {t}, expected numbers or text")


def customers_from_transactions(transactions: pa.Table) -> pa.Table:
    """``raw.customers`` derived from the lines: one row per non-null customer id, ordered by id."""
    import duckdb

    con = duckdb.connect()  # in memory: the same rows and tie-breaks whatever the warehouse
    try:
        con.register("lines", transactions)
        table = con.sql(
            """
            with per_country as (
                select customer_id, country, count(*) as n_lines
                from lines
                where customer_id is not null
                group by customer_id, country
            ),
            ranked as (
                select customer_id, country,
                       row_number() over (
                           partition by customer_id
                           order by n_lines desc, country nulls last
                       ) as rank
                from per_country
            ),
            firsts as (
                select customer_id,
                       min(case when not starts_with(invoice_no, 'C') then invoice_date end) as first_purchase_at
                from lines
                where customer_id is not null
                group by customer_id
            )
            select r.customer_id, r.country, f.first_purchase_at
            from ranked as r
            join firsts as f on f.customer_id = r.customer_id
            where r.rank = 1
            order by r.customer_id
            """
        ).to_arrow_table()
    finally:
        con.close()
    return table.cast(
        pa.schema(
            [
                pa.field("customer_id", pa.string()),
                pa.field("country", pa.string()),
                pa.field("first_purchase_at", pa.timestamp("us")),
            ]
        )
    )


def init_demo_warehouse(
    url: str | None = None, *, data_path: str | Path | None = None, replace: bool = True
) -> dict[str, Any]:
    """Load the demo data into schema ``raw`` of the warehouse at ``url`` (default: the local one).

    replace=True (re)writes ``raw.transactions`` and ``raw.customers`` in one transaction, so running
    it twice gives the same tables. replace=False leaves existing tables untouched (and only loads
    when neither exists). Returns the row counts: transactions, customers, guest_lines (lines without
    a customer id), and loaded (whether this call wrote the tables).
    """
    from segmentation.warehouse import connect

    started = time.perf_counter()
    wh = connect(url)
    try:
        if not replace:
            present = [t for t in (TRANSACTIONS_TABLE, CUSTOMERS_TABLE) if wh.table_exists(RAW_SCHEMA, t)]
            if len(present) == 2:
                counts = _counts(wh)
                log.info("demo warehouse %s already loaded (replace=False): %s", wh, counts)
                return {**counts, "loaded": False}
            if present:
                raise DemoDataError(
                    f"{wh}: {RAW_SCHEMA}.{present[0]} exists but not the other demo table; "
                    "call init_demo_warehouse(..., replace=True) to reload both"
                )

        transactions = read_transactions(data_path)
        customers = customers_from_transactions(transactions)
        expected = {
            "transactions": transactions.num_rows,
            "customers": customers.num_rows,
            "guest_lines": transactions.column("customer_id").null_count,
        }
        with wh.transaction() as tx:
            tx.create_schema(RAW_SCHEMA)
            tx.write_table(RAW_SCHEMA, TRANSACTIONS_TABLE, transactions, mode="replace")
            tx.write_table(RAW_SCHEMA, CUSTOMERS_TABLE, customers, mode="replace")
            counts = _counts(tx)
            if counts != expected:  # the load itself went wrong: roll back rather than carry on
                raise DemoDataError(f"{wh}: the load wrote {counts}, expected {expected}; rolled back")
    finally:
        wh.close()
    log.info(
        "demo warehouse %s loaded in %.1f s: %d lines (%d guest), %d customers",
        wh, time.perf_counter() - started, counts["transactions"], counts["guest_lines"], counts["customers"],
    )
    return {**counts, "loaded": True}


def _counts(wh: Any) -> dict[str, int]:
    tx = f"{wh.qualified(RAW_SCHEMA, TRANSACTIONS_TABLE)}"
    cu = f"{wh.qualified(RAW_SCHEMA, CUSTOMERS_TABLE)}"
    row = wh.query(
        f"select (select count(*) from {tx}) as transactions, "
        f"(select count(*) from {cu}) as customers, "
        f"(select count(*) from {tx} where customer_id is null) as guest_lines"
    ).to_pylist()[0]
    return {k: int(v) for k, v in row.items()}
