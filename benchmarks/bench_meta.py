"""Provenance of a benchmark result: ``mnist_gmvae.machine_info`` plus what the newer benchmarks need.

Adds the versions of the warehouse stack, total memory, and the tracked files of the library that
differ from the recorded commit (``git status``): on a shared working tree the code that ran is not
always the commit named.
"""
from __future__ import annotations

import subprocess
from typing import Any

from mnist_gmvae import REPO, machine_info

LIBRARY_PATHS = ("segmentation", "validation", "dags")


def uncommitted_library_files() -> list[str] | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", *LIBRARY_PATHS],
                             capture_output=True, text=True, timeout=10)
    except Exception:  # noqa: BLE001 - provenance is best effort
        return None
    return [line[3:] for line in out.stdout.splitlines() if line[:2].strip() and not line.startswith("??")]


def bench_machine(threads: int = 1) -> dict[str, Any]:
    m = machine_info(threads)
    v = m["versions"]
    for name, mod in (("duckdb", "duckdb"), ("pyarrow", "pyarrow"), ("great-expectations", "great_expectations"),
                      ("psycopg", "psycopg"), ("matplotlib", "matplotlib")):
        try:
            v[name] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed: not recorded
            pass
    try:
        import psutil

        m["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    m["uncommitted_library_files"] = uncommitted_library_files()
    return m


__all__ = ["bench_machine", "uncommitted_library_files"]
