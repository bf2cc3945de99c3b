"""A short, human summary of what the latest run published (printed by `make demo`)."""
from __future__ import annotations

from pathlib import Path

from segmentation.publish import ASSIGNMENTS, CURRENT_VIEW, PROFILES, RUNS, SEGMENTS


def summary_text(url: str | None, schema: str = "segments") -> str:
    from segmentation.warehouse import connect, default_url

    url = url or default_url()
    if url.partition("://")[0].lower() == "duckdb":
        from segmentation.warehouse.duckdb_warehouse import DuckDBWarehouse

        path = DuckDBWarehouse(url).path
        if path != ":memory:" and not Path(path).exists():
            # a read-only command: opening the file would create an empty warehouse (and its folder)
            return (f"no warehouse at {path}: run `make demo` (or `segment demo init` and `segment run --date "
                    "YYYY-MM-DD`) first, or point --warehouse / SEGMENT_WAREHOUSE_URL at yours")
    with connect(url) as wh:
        q = wh.qualified
        if not wh.table_exists(schema, RUNS):
            return f"nothing published yet in {wh}: run `segment run --date YYYY-MM-DD` or the Airflow DAG"
        run = wh.query(
            f"SELECT run_id, run_date, status, model_version, message FROM {q(schema, RUNS)} "
            "WHERE status = 'success' ORDER BY run_date DESC LIMIT 1"
        ).to_pylist()
        sizes = wh.query(
            f"SELECT c.segment_id, s.label, count(*) AS customers FROM {q(schema, CURRENT_VIEW)} c "
            f"JOIN {q(schema, SEGMENTS)} s ON s.segment_id = c.segment_id "
            "GROUP BY c.segment_id, s.label ORDER BY customers DESC"
        ).to_pylist()
        failed = wh.query(f"SELECT count(*) AS n FROM {q(schema, RUNS)} WHERE status = 'failed'").column("n")[0].as_py()
        where = str(wh)
    if not run:
        return f"no successful run yet in {where} ({failed} failed run(s) recorded in {schema}.{RUNS})"
    r = run[0]
    total = sum(s["customers"] for s in sizes) or 1
    lines = [
        f"Published by run {r['run_id']} (run date {r['run_date']}, model {r['model_version']}) in {where}:",
        f"  {total:,} customers in {len(sizes)} segments",
    ]
    for s in sizes:
        lines.append(f"  segment {s['segment_id']:>3}  {s['customers']:>7,}  {s['customers'] / total:6.1%}  {s['label']}")
    try:
        from segmentation.artifacts import open_store

        report = open_store().run_file(r["run_date"], "report.html")
    except Exception:  # the summary is a convenience: never fail on the report's whereabouts
        report = None
    if report:
        lines += ["", f"Segment report (open in a browser): {report}"]
    lines += [
        "",
        "Tables written:",
        f"  {schema}.{ASSIGNMENTS:<28} history: one row per (run_date, customer_id)",
        f"  {schema}.{CURRENT_VIEW:<28} the latest successful run, one row per customer",
        f"  {schema}.{SEGMENTS:<28} every segment id issued, with its label and status",
        f"  {schema}.{PROFILES:<28} per run and segment: size, share, what sets it apart (JSON)",
        f"  {schema}.{RUNS:<28} one row per run: status, model, validation, stability",
        "",
        "Try:",
        "  SELECT s.label, count(*) AS customers, avg(c.segment_probability) AS confidence",
        f"  FROM {schema}.{CURRENT_VIEW} c JOIN {schema}.{SEGMENTS} s USING (segment_id)",
        "  GROUP BY s.label ORDER BY customers DESC;",
    ]
    return "\n".join(lines)
