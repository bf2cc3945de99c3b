"""Shared fixtures. Keep this file small: heavy imports go inside fixtures, nothing runs at collection.

Warehouse fixtures (real databases, no mocks):
- ``warehouse_url``: parametrized over ``duckdb`` (a file under tmp_path) and ``postgres`` (a fresh,
  empty database on the test server, dropped afterwards). A test using it runs once per backend.
- ``postgres_url``: the PostgreSQL case only.
- ``warehouse``: ``connect(warehouse_url)``, closed after the test.

PostgreSQL: ``SEGMENT_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) is the
maintenance connection used to create and drop the per-test databases. If the server is unreachable,
postgres cases are skipped, or fail when ``REQUIRE_POSTGRES=1`` (CI sets it, so a broken database
never passes as "skipped").
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("SEGMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[Any]:
    """One autocommit connection to the maintenance database for the whole session."""
    import psycopg

    try:
        conn = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        reason = f"PostgreSQL is not reachable at {urlsplit(ADMIN_URL).netloc.rpartition('@')[2]}: {exc}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    yield conn
    conn.close()


@pytest.fixture
def postgres_url(_postgres_admin: Any) -> Iterator[str]:
    """URL of a fresh, empty database ``seg_test_<random>``; dropped (WITH (FORCE)) afterwards."""
    name = f"seg_test_{uuid.uuid4().hex[:12]}"
    _postgres_admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        yield url
    finally:
        _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A warehouse URL per backend: a DuckDB file under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path}/warehouse.duckdb"  # tmp_path is absolute: duckdb:////...
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def warehouse(warehouse_url: str) -> Iterator[Any]:
    """An open ``segmentation.warehouse.Warehouse`` on ``warehouse_url``; closed afterwards."""
    from segmentation.warehouse import connect

    wh = connect(warehouse_url)
    try:
        yield wh
    finally:
        wh.close()
