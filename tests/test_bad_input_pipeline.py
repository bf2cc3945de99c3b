"""Real-world faults in the CRM tables, run through the whole pipeline after a good night: each
stops the run with an error naming the table, the column and the problem, records the failed run,
and leaves every published table identical (checksummed) to before."""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from segmentation import pipeline
from segmentation.warehouse import connect
from test_pipeline import assert_unchanged_except_one_failed_run, snapshot

D = dt.date(2011, 12, 8)
NEXT = D + dt.timedelta(days=1)

# (id, SQL applied to the demo warehouse, words the error must contain: table.column and the problem)
FAULTS = [
    ("missing-column", "ALTER TABLE raw.transactions DROP COLUMN unit_price", ["raw.transactions.unit_price", "missing"]),
    ("renamed-column", "ALTER TABLE raw.customers RENAME COLUMN customer_id TO cust_id",
     ["raw.customers.customer_id", "missing"]),
    ("wrong-type", "ALTER TABLE raw.transactions ALTER invoice_date TYPE VARCHAR",
     ["raw.transactions.invoice_date", "type"]),
    ("text-in-numeric", "ALTER TABLE raw.transactions ALTER quantity TYPE VARCHAR; "
     "UPDATE raw.transactions SET quantity = 'lots' WHERE invoice_no = '536365'", ["raw.transactions.quantity", "type"]),
    ("all-null-column", "UPDATE raw.customers SET customer_id = NULL", ["raw.customers.customer_id", "null"]),
    ("duplicate-ids", "INSERT INTO raw.customers SELECT * FROM raw.customers WHERE customer_id IN ('12347', '12348')",
     ["raw.customers.customer_id", "12347"]),
    ("empty-table", "DELETE FROM raw.customers", ["raw.customers", "row count"]),
    ("null-ids", "UPDATE raw.customers SET customer_id = NULL WHERE customer_id IN ('12347', '12348', '12349')",
     ["raw.customers.customer_id", "null"]),
    ("negative-prices", "UPDATE raw.transactions SET unit_price = -2.5 WHERE invoice_no = '536365'",
     ["raw.transactions.unit_price", "536365"]),
    ("nan-prices", "UPDATE raw.transactions SET unit_price = 'NaN'::DOUBLE WHERE invoice_no = '536366'",
     ["raw.transactions.unit_price", "NaN"]),
    ("inf-prices", "UPDATE raw.transactions SET unit_price = 'inf'::DOUBLE WHERE invoice_no = '536367'",
     ["raw.transactions.unit_price", "inf"]),
    ("extreme-outlier", "UPDATE raw.transactions SET unit_price = 1e9 WHERE invoice_no = '536368'",
     ["raw.transactions.unit_price", "1e+09"]),
    ("future-dates", "UPDATE raw.transactions SET invoice_date = TIMESTAMP '2099-01-01' WHERE invoice_no = '536369'",
     ["raw.transactions.invoice_date", "2099"]),
    ("timezone-shift", "UPDATE raw.transactions SET invoice_date = now()::TIMESTAMP + INTERVAL 10 HOUR "
     "WHERE invoice_no = '536370'", ["raw.transactions.invoice_date"]),
    ("truncated-load", "DELETE FROM raw.transactions WHERE invoice_date < TIMESTAMP '2011-09-01'",
     ["raw.transactions", "row count"]),
    ("flipped-cancellations", "UPDATE raw.transactions SET quantity = -quantity WHERE invoice_no LIKE 'C%'",
     ["raw.transactions.invoice_no", "positive quantity"]),
]


@pytest.fixture(scope="module")
def good_night(tmp_path_factory):
    from segmentation.demo import init_demo_warehouse

    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    root = tmp_path_factory.mktemp("faults")
    url = f"duckdb:///{root}/warehouse.duckdb"
    init_demo_warehouse(url)
    pipeline.run_all(url, D, artifacts=str(root / "artifacts"))
    shutil.copy(root / "warehouse.duckdb", root / "pristine.duckdb")
    return url, root


@pytest.mark.slow
@pytest.mark.parametrize("sql, words", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault_stops_the_run_and_changes_nothing(good_night, sql, words):
    url, root = good_night
    shutil.copy(root / "pristine.duckdb", root / "warehouse.duckdb")
    with connect(url) as wh:
        for statement in sql.split("; "):
            wh.execute(statement)
    before = snapshot(url)
    with pytest.raises(Exception) as info:
        pipeline.run_all(url, NEXT, artifacts=str(root / "artifacts"))
    message = str(info.value)
    for w in words:
        assert w.lower() in message.lower(), f"{w!r} not in: {message}"
    after = snapshot(url)
    failed = assert_unchanged_except_one_failed_run(before, after, NEXT, "extract")
    assert words[0] in failed["message"]
    assert not (Path(root) / "artifacts" / "runs" / NEXT.isoformat() / "assignments.parquet").exists()
