"""The HTML segment report: built from a small synthetic run (real model, real DuckDB warehouse,
local artifact store), checked as text and in a real headless browser.

Browser tests use Debian's chromium (``/usr/bin/chromium``, or ``$REPORT_CHROMIUM``) driven by the
``playwright`` Python package (no ``playwright install``: the system browser is launched directly).
Without them the browser tests are skipped, or FAIL when ``REQUIRE_BROWSER=1`` (CI sets it).
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MALICIOUS = "<script>alert(1)</script>"
DAY1, DAY2 = "2024-03-01", "2024-03-02"
CHROMIUM = os.environ.get("REPORT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SPEC = {
    "name": "synthetic",
    "entity_key": "customer_id",
    "features_relation": {"schema": "features", "table": "customer_features"},
    "output_schema": "segments",
    "features": [
        {"name": "spend", "type": "money", "description": "Total spend (GBP). Summed over all orders.",
         "high_label": "big spenders across every product line", "low_label": "small spenders on rare occasions"},
        {"name": "visits", "type": "count", "description": "Number of visits to the shop.",
         "high_label": "frequent", "low_label": "rare visitors"},
        {"name": "satisfaction", "type": "continuous", "description": "Satisfaction score from surveys.",
         "high_label": "happy", "low_label": "MAD WITH OUR WOMENSWEAR"},
        {"name": "promo_opt_in", "type": "binary", "description": "1 if the customer accepts promotions, else 0.",
         "high_label": "promo fans", "low_label": "promo-averse"},
        {"name": "region", "type": "categorical", "description": "Region of the customer's address."},
    ],
}
NUMERIC_FEATURES = 4


# ---------------------------------------------------------------------------------------------
# a small synthetic run: two nights, published to DuckDB
# ---------------------------------------------------------------------------------------------
def _publish_night(url: str, spec: Any, store: Any, model: Any, version: str, run_date: str, df: Any,
                   previous: Any, validation: dict[str, Any]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segmentation.profiles import profile_segments, profiles_tables
    from segmentation.publish import publish_run
    from segmentation.warehouse import connect

    folder = store.run_dir(run_date)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / "features.parquet")
    proba = model.predict_proba(df)
    order = np.argsort(-proba, axis=1)
    seg, runner = order[:, 0] + 1, order[:, 1] + 1
    assignments = pa.table({
        "customer_id": pa.array(df["customer_id"].astype(str).to_numpy(), pa.string()),
        "segment_id": pa.array(seg, pa.int64()),
        "segment_probability": pa.array(proba[np.arange(len(df)), order[:, 0]].astype("float64")),
        "runner_up_segment_id": pa.array(runner, pa.int64()),
    })
    pq.write_table(assignments, folder / "assignments.parquet")
    profiles = profile_segments(df.reset_index(drop=True), seg, spec)
    (folder / "profiles.json").write_text(json.dumps(profiles))
    (folder / "validation.json").write_text(json.dumps(validation))
    stability: dict[str, Any] = {"previous_customers": 0, "common_customers": 0}
    if previous is not None:
        prev = dict(zip(previous["customer_id"], previous["segment_id"]))
        common = [(p, int(s)) for p, s in zip(df["customer_id"], seg) if p in prev]
        moved = sum(prev[c] != s for c, s in common)
        stability = {"previous_customers": len(prev), "common_customers": len(common), "moved_customers": moved,
                     "moved_share": moved / len(common), "ari_vs_previous": 0.9, "new_segment_ids": [],
                     "retired_segment_ids": []}
    segments_tbl, profiles_tbl = profiles_tables(profiles)
    now = dt.datetime.now(dt.UTC)
    record = {
        "status": "success", "started_at": now, "finished_at": now,
        "validation": {"status": validation["status"], "drift_detected": False, "outputs": "passed"},
        "stability": stability,
        "training": {"model_version": version, "mode": "retrain" if previous is None else "keep",
                     "reason": "no model in production yet" if previous is None else "production model still fits",
                     "promoted": True, "scoring_version": version, "gate": []},
        "message": "ok",
    }
    with connect(url) as wh:
        publish_run(wh, schema=spec.output_schema, run_date=dt.date.fromisoformat(run_date),
                    run_id=f"{spec.name}-{run_date}", model_version=version, assignments=assignments,
                    segments=segments_tbl, profiles=profiles_tbl, run_record=record)
    return assignments.to_pandas(), profiles


def _validation(status: str, message: str) -> dict[str, Any]:
    stage = {"status": status, "counts": {"checks": 3, "passed": 2, "errors": 0, "warnings": 1}, "checks": [
        {"success": True, "severity": "error", "check": "exists", "message": "ok"},
        {"success": False, "severity": "warning", "check": "range", "message": message},
    ]}
    return {"status": status, "raw": stage, "features": {**stage, "status": "passed", "checks": [],
                                                          "counts": {"checks": 2, "passed": 2}}}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import yaml

    from segmentation import ConcreteGMVAE
    from segmentation.artifacts import LocalArtifactStore
    from segmentation.spec import load_spec
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    root = tmp_path_factory.mktemp("report")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    spec = load_spec(spec_path)
    df, _ = planted_customers(n=900, k=3, seed=3, missing=0.05)
    # a hostile category: the favourite region of one planted segment (it also reaches a label)
    df.loc[df["region"] == "north", "region"] = MALICIOUS
    model = ConcreteGMVAE(n_segments=3, latent_dim=3, hidden=(32,), epochs=20, kl_anneal_epochs=5, batch_size=128, seed=0,
                          device="cpu", progress=None).fit(df, FEATURE_TYPES)
    store = LocalArtifactStore(root / "artifacts")
    tmp = store.new_model_dir()
    model.save(str(tmp))
    version = "20240301-test"
    store.add_model(version, tmp)
    url = f"duckdb:///{root}/warehouse.duckdb"

    night1 = df.iloc[:850].reset_index(drop=True)        # 50 customers arrive on night 2
    night2 = df.iloc[20:].reset_index(drop=True).copy()  # 20 customers gone by night 2
    movers = night2.index[:60]
    night2.loc[movers, "spend"] = night2.loc[movers, "spend"] * 40  # some customers change a lot
    night2.loc[movers, "visits"] = night2.loc[movers, "visits"] + 30
    a1, _ = _publish_night(url, spec, store, model, version, DAY1, night1, None,
                           _validation("warning", "raw.t.price: price >= 0 <b>observed</b> -3"))
    a2, profiles = _publish_night(url, spec, store, model, version, DAY2, night2, a1,
                                  _validation("warning", f"raw.t.region: <b>odd</b> value {MALICIOUS}"))
    run = {"run_id": f"{spec.name}-{DAY2}", "run_date": DAY2, "spec_path": str(spec_path),
           "artifacts": str(store.root), "as_of": f"{DAY2}T00:00:00+00:00"}
    return {"url": url, "run": run, "store": store, "spec": spec, "profiles": profiles, "a1": a1, "a2": a2,
            "night2": night2, "root": root}


@pytest.fixture(scope="module")
def report(synthetic_run: dict[str, Any]) -> dict[str, Any]:
    from segmentation.report import build_report

    path = build_report(synthetic_run["url"], synthetic_run["run"])
    return {"path": path, "html": path.read_text(encoding="utf-8"), **synthetic_run}


class _Elements(HTMLParser):
    """Every start tag with its attributes and the id of the enclosing <svg>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self._svg: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self._svg.append(a.get("id"))
        self.elements.append((tag, a, self._svg[-1] if self._svg else None))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "svg":
            self._svg.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._svg:
            self._svg.pop()


def _elements(page: str) -> list[tuple[str, dict[str, str], str | None]]:
    p = _Elements()
    p.feed(page)
    return p.elements


def _count(elements: list, svg_id: str, tag: str, cls: str | None = None) -> int:
    return sum(1 for t, a, s in elements
               if s == svg_id and t == tag and (cls is None or cls in a.get("class", "").split()))


# ---------------------------------------------------------------------------------------------
# the page as text
# ---------------------------------------------------------------------------------------------
def test_report_written_to_the_run_folder(report: dict[str, Any]) -> None:
    store = report["store"]
    assert report["path"] == store.run_dir(DAY2) / "report.html"
    assert store.run_file(DAY2, "report.html") == report["path"]
    assert report["html"].startswith("<!DOCTYPE html>")


def test_every_segment_has_a_card_with_its_escaped_label(report: dict[str, Any]) -> None:
    page = report["html"]
    labels = [p["label"] for p in report["profiles"]]
    assert len(labels) == 3
    for p in report["profiles"]:
        assert html.escape(p["label"]) in page
        assert f'id="segment-{p["segment_id"]}"' in page
        assert f'{p["size"]:,} customers' in page
    # the hostile category reached a label and the top categories: escaped everywhere, never raw
    assert any(MALICIOUS in label for label in labels)
    assert MALICIOUS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page  # a validation message
    assert "<script" not in page.lower()


def test_cards_explain_differences_in_words(report: dict[str, Any]) -> None:
    page = report["html"]
    assert "What sets it apart" in page
    # descriptions (first sentence) with medians against the whole base and a direction in words
    assert re.search(r"Total spend \(GBP\): median <strong>[\d,.]+</strong> vs [\d,.]+ overall "
                     r'<span class="words (hi|lo)">\((much |slightly )?(higher|lower)\)</span>', page)
    assert re.search(r"Promo fans: share <strong>\d+%</strong> vs \d+% overall", page)
    assert "Top categories" in page and "Typical values of every feature" in page


def test_charts_are_inline_svg_with_expected_marks(report: dict[str, Any]) -> None:
    els = _elements(report["html"])
    svg_ids = [a.get("id") for t, a, _ in els if t == "svg"]
    for sid in ("size-chart", "effect-heatmap", "heatmap-legend", "latent-map", "changes-matrix"):
        assert sid in svg_ids
    k = len(report["profiles"])
    assert _count(els, "size-chart", "rect", "bar") == k
    assert _count(els, "size-chart", "line", "prev") == k  # previous run's sizes as ticks
    assert _count(els, "effect-heatmap", "g", "cell") == k * NUMERIC_FEATURES
    n_customers = len(report["night2"])
    assert _count(els, "latent-map", "circle", "pt") == min(n_customers, 3000)
    # previous segments (+ a "new customers" row) x current segments (+ a "gone" column)
    prev_k = report["a1"]["segment_id"].nunique()
    assert _count(els, "changes-matrix", "g", "mcell") == (prev_k + 1) * (k + 1) - 1
    # every svg is labelled for screen readers
    for t, a, _ in els:
        if t == "svg":
            assert a.get("role") == "img" and a.get("aria-labelledby")


def test_changes_since_previous_run(report: dict[str, Any]) -> None:
    from segmentation.report import transition_matrix

    a1, a2 = report["a1"], report["a2"]
    tm = transition_matrix(a1, a2)
    common = set(a1["customer_id"]) & set(a2["customer_id"])
    assert tm["common"] == len(common) == 830
    assert sum(tm["new"]) == 50 and sum(tm["gone"]) == 20
    prev = dict(zip(a1["customer_id"], a1["segment_id"]))
    movers = sum(prev[c] != s for c, s in zip(a2["customer_id"], a2["segment_id"]) if c in prev)
    assert tm["movers"] == movers > 0
    assert int(tm["counts"].sum()) == len(common)
    assert f"<strong>{movers:,}</strong>" in report["html"]
    assert f"Previous run: {DAY1}" in report["html"]


def test_overview_and_validation(report: dict[str, Any]) -> None:
    page = report["html"]
    for text in ("Customers", "20240301-test", "kept the production model unchanged",
                 DAY2, f"synthetic-{DAY2}", "Stability", "Data validation", "Failed and warned checks",
                 "Recent runs"):
        assert text in page
    assert f"{len(report['night2']):,}" in page
    assert "&lt;script&gt;" in page.split('id="validation"')[1]  # the check message, escaped


def test_page_is_self_contained(report: dict[str, Any]) -> None:
    page = report["html"]
    els = _elements(page)
    for tag, attrs, _ in els:
        for name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            value = attrs.get(name, "")
            assert not re.match(r"\s*([a-z][a-z0-9+.-]*:|//)", value, re.IGNORECASE) or value.startswith("data:"), (tag, name, value)
        assert tag not in ("script", "link", "iframe", "img", "object", "embed"), tag
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.IGNORECASE)
    assert "@import" not in page and not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    assert "@font-face" not in page


def test_first_run_has_no_comparison(synthetic_run: dict[str, Any], tmp_path: Path) -> None:
    from segmentation.report import build_report_for_date

    out = build_report_for_date(synthetic_run["url"], DAY1, artifacts=synthetic_run["run"]["artifacts"],
                                spec_path=synthetic_run["run"]["spec_path"], out_path=tmp_path / "r.html")
    page = out.read_text()
    assert out == tmp_path / "r.html"
    assert synthetic_run["store"].run_file(DAY1, "report.html") is None  # out_path: nothing stored
    assert "first published run" in page and 'id="changes-matrix"' not in page
    assert f"synthetic-{DAY1}" in page and 'id="latent-map"' in page


def test_report_without_warehouse_or_model_still_renders(synthetic_run: dict[str, Any], tmp_path: Path) -> None:
    from segmentation.report import build_report

    run = {**synthetic_run["run"], "run_id": "synthetic-unknown"}
    shutil.copytree(synthetic_run["root"] / "artifacts", tmp_path / "artifacts")
    shutil.rmtree(tmp_path / "artifacts" / "models")
    run["artifacts"] = str(tmp_path / "artifacts")
    out = build_report(f"duckdb:///{tmp_path}/empty.duckdb", run)
    page = out.read_text()
    assert "No map:" in page and "No comparison:" in page
    for p in synthetic_run["profiles"]:
        assert html.escape(p["label"]) in page


def test_missing_profiles_is_a_clear_error(synthetic_run: dict[str, Any], tmp_path: Path) -> None:
    from segmentation.report import ReportError, build_report

    run = {**synthetic_run["run"], "run_date": "2030-01-01", "artifacts": str(tmp_path / "artifacts")}
    with pytest.raises(ReportError, match="profiles.json"):
        build_report(synthetic_run["url"], run)


def test_latent_map_subsamples_deterministically() -> None:
    import pandas as pd

    from segmentation.report import latent_map

    class Model:
        def transform(self, X):
            z = np.zeros((len(X), 4))
            z[:, 0] = X["a"].to_numpy()
            z[:, 1] = X["a"].to_numpy() ** 2 % 7
            return z

    X = pd.DataFrame({"a": np.arange(5000, dtype=float)})
    seg = np.arange(5000) % 4
    m1 = latent_map(Model(), X, seg, max_points=3000, seed=0)
    m2 = latent_map(Model(), X, seg, max_points=3000, seed=0)
    assert m1["xy"].shape == (3000, 2) and m1["n_total"] == 5000
    assert np.array_equal(m1["xy"], m2["xy"]) and np.array_equal(m1["segment"], m2["segment"])
    assert 0.99 < sum(m1["explained"]) <= 1.0 + 1e-9
    assert latent_map(Model(), X.iloc[:10], seg[:10])["xy"].shape == (10, 2)


def test_number_formats() -> None:
    from segmentation.report import effect_words, fmt_int, fmt_num, fmt_pct

    assert fmt_int(1234) == "1,234"
    assert fmt_pct(0.1234) == "12.3%" and fmt_pct(0) == "0%" and fmt_pct(0.00001) == "<0.1%"
    assert fmt_num(1481.31) == "1,481" and fmt_num(61.94) == "61.9" and fmt_num(2.5) == "2.5" and fmt_num(None) == "–"
    assert effect_words(-1.2) == "much lower" and effect_words(0.3) == "slightly higher"
    assert effect_words(0.05) == "about the same" and effect_words(0.6) == "higher"


# ---------------------------------------------------------------------------------------------
# in a real browser
# ---------------------------------------------------------------------------------------------
def _require_browser() -> None:
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the Python package playwright is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    if problems:
        reason = "real-browser test cannot run: " + "; ".join(problems)
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(reason)


def render_in_browser(path: Path, screenshot: Path, width: int = 1400) -> dict[str, Any]:
    """Open ``path`` (file://) in headless chromium with every non-file request blocked; return console
    errors, blocked requests, dialogs, the bounding boxes of the charts, and save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"errors": [], "blocked": [], "dialogs": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: out["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out["errors"].append(str(e)))
            page.on("dialog", lambda d: (out["dialogs"].append(d.message), d.dismiss()))

            def guard(route: Any) -> None:
                if route.request.url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    out["blocked"].append(route.request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(path.resolve().as_uri(), wait_until="load")
            out["boxes"] = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('svg[id]')].map(
                s => { const r = s.getBoundingClientRect(); return [s.id, [r.width, r.height]]; }))""")
            out["marks"] = page.evaluate("""() => {
                const q = s => [...document.querySelectorAll(s)].map(e => e.getBoundingClientRect())
                    .filter(r => r.width > 0 && r.height > 0).length;
                return {bars: q('#size-chart rect.bar'), cells: q('#effect-heatmap g.cell rect'),
                        points: q('#latent-map circle.pt'), matrix: q('#changes-matrix g.mcell rect')}; }""")
            out["title"] = page.title()
            out["h2"] = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            out["overflow"] = page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth + 1")
            # a row label must not run off the chart's left side (or under the heatmap's colour swatch,
            # losing its segment number), nor into the plot unless clipped to its column
            out["clipped_labels"] = page.evaluate("""() => [...document.querySelectorAll('svg[id] text.lbl')]
                .filter(t => { const b = t.getBBox(), maxX = t.getAttribute('data-max-x');
                    return b.x < (t.closest('svg').id === 'effect-heatmap' ? 18 : 0)
                        || (maxX !== null && b.x + b.width > +maxX && !t.getAttribute('clip-path')); })
                .map(t => t.textContent)""")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's path; checked before the (slow) synthetic run is built."""
    _require_browser()
    return CHROMIUM


@pytest.mark.parametrize("width", [1400, 800])
def test_report_renders_in_headless_chromium(chromium: str, report: dict[str, Any], tmp_path: Path, width: int) -> None:
    shot = tmp_path / f"report-{width}.png"
    got = render_in_browser(report["path"], shot, width=width)
    assert got["errors"] == [], got["errors"]
    assert got["blocked"] == [], f"the page tried to load {got['blocked']}"
    assert got["dialogs"] == [], "a script from the data ran"
    for sid in ("size-chart", "effect-heatmap", "heatmap-legend", "latent-map", "changes-matrix"):
        w, h = got["boxes"][sid]
        assert w > 50 and h > 40, (sid, w, h)
    k = len(report["profiles"])
    assert got["marks"]["bars"] == k
    assert got["marks"]["cells"] == k * NUMERIC_FEATURES
    assert got["marks"]["points"] == len(report["night2"])
    assert got["marks"]["matrix"] > k
    assert not got["overflow"], "the page scrolls sideways"
    assert got["clipped_labels"] == [], got["clipped_labels"]
    assert DAY2 in got["title"]
    assert [h.strip() for h in got["h2"]][:3] == ["Overview", "At a glance", "Segments"]
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overview_says_which_ids_were_kept_by_profile_similarity() -> None:
    """A segment id carried over by resemblance (no shared customers) is named as such, so a
    marketer knows the match is by profile, not by the same people."""
    from segmentation.report import _segment_churn_text

    st = {"new_segment_ids": [], "retired_segment_ids": [4],
          "matched_by_prototype": {"0": {"segment_id": 2, "distance": 0.1}, "3": {"segment_id": 1, "distance": 0.3}}}
    assert _segment_churn_text(st) == "ids 1, 2 kept by profile similarity; retired: 4"
    assert _segment_churn_text({"new_segment_ids": [], "retired_segment_ids": []}) == "same segment ids as the previous run"
