"""The per-run HTML segment report: what each segment is, how it differs, and what changed.

    from segmentation.report import build_report
    path = build_report(url, run)          # after publish; writes <run folder>/report.html

    build_report_for_date(url, "2011-12-09")   # the same for a past run (CLI / backfills)

The page is one static, self-contained HTML file: inline CSS, charts as inline SVG drawn here in
Python, no scripts, no fonts or images from anywhere, so it opens offline, from an e-mail
attachment or an S3 console. Every string that comes from data (labels, categories, validation
messages, ids) goes through ``html.escape``.

Inputs (all read, never written, except the report itself):
- the run's folder in the artifact store: ``profiles.json`` (required), ``features.parquet`` and
  ``assignments.parquet`` (for the overall baseline, the customer map and the changes),
  ``validation.json`` / ``validation_outputs.json``;
- the scoring model (``ConcreteGMVAE.load(...).transform``) for the 2-D customer map;
- the warehouse: this run's ``segmentation_runs`` row, the previous successful run's
  assignments and labels, and the last few run records for the history table.

A missing optional input leaves its section with a note saying why, never a failed report.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmentation.spec import Feature, Spec, load_spec

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
MAX_MAP_POINTS = 3000       # customers drawn on the latent map (a seeded random sample)
HISTORY_RUNS = 10           # run records in the history table
MAX_TRAITS = 5              # "what sets it apart" lines per segment card
MIN_SHOWN_EFFECT = 0.2      # |effect| below this reads "about the same" and is not listed as a trait
MISSING_GAP = 0.4           # a gap in the share of empty values this large is a trait too
HEATMAP_CLAMP = 2.0         # colour scale of the heatmap saturates at +-2 standard deviations

# Colour-blind-safe categorical palette: Okabe & Ito (2008), then Paul Tol's "muted" scheme for
# more than eight segments. Segment colours follow the order of segment ids in the run.
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C7A00", "#000000",
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#CC6677", "#882255", "#AA4499",
)
# Diverging scale (lower = blue, higher = orange), distinguishable with every common colour-vision deficiency.
LOW_COLOUR, MID_COLOUR, HIGH_COLOUR = (33, 102, 172), (247, 247, 247), (179, 88, 6)
# changes matrix: customers who stayed in grey, customers who moved / joined / left in orange
STAY_COLOUR, MOVE_LOW, MOVE_HIGH = "#e8e8e8", (254, 237, 222), (166, 54, 3)

TRAINING_MODES = {
    "retrain": "trained a new model from scratch",
    "refresh": "refreshed (fine-tuned) the production model",
    "keep": "kept the production model unchanged",
    "reuse": "reused the model already trained for this date (a rerun)",
}


class ReportError(RuntimeError):
    """The report cannot be built (e.g. the run has no profiles yet); the message says why."""


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """HTML-escape anything for text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(float(x))


def fmt_int(n: Any) -> str:
    return f"{int(n):,}" if _finite(n) else "–"


def fmt_pct(x: Any, digits: int = 1) -> str:
    """0.1234 -> '12.3%'; tiny non-zero shares read '<0.1%' rather than a misleading 0.0%."""
    if not _finite(x):
        return "–"
    x = float(x)
    if x == 0:
        return "0%"
    if 0 < abs(x) < 0.5 * 10 ** -(digits + 2):
        return f"<{10 ** -digits:.{digits}f}%"
    return f"{100 * x:.{digits}f}%"


def fmt_num(x: Any) -> str:
    """A readable number: 1,482 / 61.9 / 2.35 / 0.078."""
    if not _finite(x):
        return "–"
    x = float(x)
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if float(x).is_integer():
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _customers(n: int) -> str:
    return f"{fmt_int(n)} customer{'' if n == 1 else 's'}"


def fmt_signed(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"−{abs(n):,}" if n < 0 else "±0"


def _is_share(f: Feature) -> bool:
    """A continuous feature bounded to [0, 1] by its checks reads best as a percentage."""
    return f.type in ("continuous", "binary") and f.checks.min == 0 and f.checks.max == 1


def fmt_value(x: Any, f: Feature) -> str:
    if f.type == "binary" or _is_share(f):
        return fmt_pct(x, 0 if _finite(x) and abs(float(x)) >= 0.1 else 1)
    return fmt_num(x)


def effect_words(effect: float | None) -> str:
    """Effect size (in standard deviations of the whole base) in words a marketer reads."""
    if not _finite(effect):
        return "no value"
    a = abs(float(effect))
    if a < MIN_SHOWN_EFFECT:
        return "about the same"
    side = "higher" if effect > 0 else "lower"
    return f"slightly {side}" if a < 0.5 else side if a < 0.8 else f"much {side}"


def humanize(name: str) -> str:
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def short_description(f: Feature) -> str:
    """The first sentence of the feature's description (without its full stop), else its name."""
    text = " ".join((f.description or "").split())
    if not text:
        return humanize(f.name)
    for sep in (". ", ".\n"):
        if sep in text:
            text = text.split(sep, 1)[0]
            break
    # asides in parentheses stay in the tooltip, unless short (a unit: "(GBP)")
    text = re.sub(r"\s*\(([^()]*)\)", lambda m: m.group(0) if len(m.group(1)) <= 25 and "=" not in m.group(1) else "", text)
    return text.rstrip(".").strip()


def feature_title(f: Feature) -> str:
    """What a feature is called on the page: a yes/no feature by its "high" words ("Repeat buyers"),
    anything else by the first sentence of its description."""
    if f.type == "binary":
        return _title_case(f.high_label) if f.high_label else f"{humanize(f.name)} (yes)"
    return short_description(f)


def _title_case(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, t))
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def diverging_colour(value: float | None, clamp: float = HEATMAP_CLAMP) -> str:
    if not _finite(value):
        return "#d9d9d9"
    t = max(-1.0, min(1.0, float(value) / clamp))
    return _hex(_mix(MID_COLOUR, HIGH_COLOUR if t > 0 else LOW_COLOUR, abs(t)))


def _ink(fill: str) -> str:
    """Black or white text, whichever reads better on ``fill``."""
    h = fill.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000" if lum > 140 else "#fff"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _fit_chars(width_px: float) -> int:
    """Characters of a chart label that fit in ``width_px``: 7.6 px per character is a safe width for
    the labels' 13 px sans-serif (measured in chromium: 7.3 px on average over marketer labels)."""
    return max(8, int(width_px / 7.6))


# ---------------------------------------------------------------------------------------------
# gathering the inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class ReportData:
    """Everything the page shows, gathered from the store and the warehouse (render_html draws it)."""

    spec: Spec
    run: dict[str, Any]
    profiles: list[dict[str, Any]]
    run_record: dict[str, Any] | None = None
    features: pd.DataFrame | None = None
    assignments: pd.DataFrame | None = None
    validation: dict[str, Any] | None = None
    validation_outputs: dict[str, Any] | None = None
    previous: pd.DataFrame | None = None            # customer_id, segment_id of the previous run
    previous_date: str | None = None
    previous_labels: dict[int, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    latent: dict[str, Any] | None = None             # xy, segment, n_total, explained
    notes: dict[str, str] = field(default_factory=dict)  # section -> why it is empty
    links: dict[str, str] = field(default_factory=dict)  # name -> relative href within the run folder
    generated_at: str = ""

    @property
    def segment_ids(self) -> list[int]:
        return [int(p["segment_id"]) for p in self.profiles]

    def colour(self, segment_id: int) -> str:
        ids = self.segment_ids
        i = ids.index(segment_id) if segment_id in ids else len(ids) + segment_id
        return PALETTE[i % len(PALETTE)]

    def label(self, segment_id: int) -> str:
        for p in self.profiles:
            if int(p["segment_id"]) == segment_id:
                return str(p.get("label", ""))
        return self.previous_labels.get(segment_id, f"segment {segment_id}")


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return None


def _json_col(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _warehouse_inputs(data: ReportData, url: str | None) -> None:
    """This run's record, the previous successful run's assignments and labels, recent runs."""
    from segmentation.publish import ASSIGNMENTS, PROFILES, RUNS
    from segmentation.warehouse import connect

    schema = data.spec.output_schema
    run_date = dt.date.fromisoformat(data.run["run_date"])
    try:
        with connect(url) as wh:
            if not wh.table_exists(schema, RUNS):
                data.notes["record"] = f"the warehouse has no {schema}.{RUNS} table yet (nothing published)"
                return
            runs = wh.qualified(schema, RUNS)
            rows = wh.query(f"SELECT * FROM {runs} WHERE run_id = ?", [data.run["run_id"]]).to_pylist()
            if rows:
                data.run_record = {k: _json_col(v) for k, v in rows[0].items()}
            else:
                data.notes["record"] = f"no record of run {data.run['run_id']} in {schema}.{RUNS}"
            history = wh.query(
                f"SELECT run_id, run_date, status, n_customers, n_segments, model_version, stability, training, "
                f"message, finished_at FROM {runs} WHERE run_date <= ? ORDER BY run_date DESC, finished_at DESC "
                f"LIMIT {HISTORY_RUNS}", [run_date]).to_pylist()
            data.history = [{k: _json_col(v) for k, v in r.items()} for r in history]
            prev_date = wh.query(
                f"SELECT max(run_date) AS d FROM {runs} WHERE status = 'success' AND run_date < ?", [run_date]
            ).column("d")[0].as_py()
            if prev_date is None:
                data.notes["changes"] = "this is the first published run: there are no earlier segments to compare with"
                return
            data.previous_date = prev_date.isoformat()
            if wh.table_exists(schema, ASSIGNMENTS):
                prev = wh.query(
                    f"SELECT customer_id, segment_id FROM {wh.qualified(schema, ASSIGNMENTS)} WHERE run_date = ?",
                    [prev_date]).to_pandas()
                data.previous = prev if len(prev) else None
            if wh.table_exists(schema, PROFILES):
                for r in wh.query(f"SELECT segment_id, label FROM {wh.qualified(schema, PROFILES)} WHERE run_date = ?",
                                  [prev_date]).to_pylist():
                    data.previous_labels[int(r["segment_id"])] = str(r["label"])
            if data.previous is None:
                data.notes["changes"] = f"the previous run ({data.previous_date}) has no published assignments"
    except Exception as exc:  # noqa: BLE001 - the report must still show what the run folder holds
        log.warning("report: warehouse tables unavailable (%s)", exc)
        data.notes.setdefault("record", f"the warehouse could not be read: {exc}")


def _model_version(data: ReportData) -> str | None:
    rec = data.run_record or {}
    training = rec.get("training") if isinstance(rec.get("training"), dict) else {}
    return rec.get("model_version") or training.get("scoring_version") or data.run.get("model_version")


def latent_map(model: Any, features: pd.DataFrame, segments: np.ndarray, *, max_points: int = MAX_MAP_POINTS,
               seed: int = 0) -> dict[str, Any]:
    """2-D PCA of the model's latent coordinates of (a seeded sample of at most ``max_points``)
    customers: {"xy": [n, 2], "segment": [n], "n_total", "explained": (pc1, pc2) variance shares}."""
    n = len(features)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=max_points, replace=False)) if n > max_points else np.arange(n)
    # shuffled drawing order: no segment is painted entirely on top of the others
    idx = idx[rng.permutation(len(idx))]
    z = np.asarray(model.transform(features.iloc[idx].reset_index(drop=True)), dtype="float64")
    z = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    comps = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
    # deterministic signs: the largest loading of each component is positive
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1, signs)[:, None]
    xy = z @ comps.T
    var = s ** 2
    explained = tuple(float(v / var.sum()) if var.sum() > 0 else 0.0 for v in (list(var[:2]) + [0.0, 0.0])[:2])
    return {"xy": xy, "segment": np.asarray(segments)[idx], "n_total": int(n), "explained": explained}


def _latent_inputs(data: ReportData) -> None:
    if data.features is None or data.assignments is None:
        data.notes["map"] = "the run's features or assignments are missing from the artifact store"
        return
    version = _model_version(data)
    if not version:
        data.notes["map"] = "the run record names no model version"
        return
    try:
        from segmentation.artifacts import open_store

        model = open_store(data.run["artifacts"]).load_model(version)
        seg = _segments_of_features(data)
        data.latent = latent_map(model, data.features, seg)
        data.latent["model_version"] = version
    except Exception as exc:  # noqa: BLE001 - a missing map must not cost the report
        log.warning("report: no latent map (%s)", exc)
        data.notes["map"] = f"model {version} could not be loaded or applied: {exc}"


def _segments_of_features(data: ReportData) -> np.ndarray:
    key = data.spec.entity_key
    by_id = pd.Series(data.assignments["segment_id"].to_numpy(), index=data.assignments["customer_id"].astype(str))
    from segmentation.scoring import entity_id_text

    seg = by_id.reindex(entity_id_text(data.features[key]))
    if seg.isna().any():
        raise ReportError(f"{int(seg.isna().sum())} customer(s) of the features have no assignment")
    return seg.to_numpy().astype("int64")


def gather(url: str | None, run: dict[str, Any], *, with_map: bool = True) -> ReportData:
    """Read everything the report shows for ``run`` (see the module docstring)."""
    import pyarrow.parquet as pq

    from segmentation.artifacts import open_store

    spec = load_spec(run.get("spec_path"))
    store = open_store(run.get("artifacts"))
    run_date = run["run_date"]
    profiles = _read_json(store.run_file(run_date, "profiles.json"))
    if not profiles:
        raise ReportError(f"run {run.get('run_id')} has no profiles.json in {store}: the report is built after the "
                          "publish step")
    data = ReportData(spec=spec, run=dict(run), profiles=sorted(profiles, key=lambda p: int(p["segment_id"])))
    data.generated_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for name, attr in (("features.parquet", "features"), ("assignments.parquet", "assignments")):
        path = store.run_file(run_date, name)
        if path is not None:
            try:
                setattr(data, attr, pq.read_table(path).to_pandas())
            except Exception as exc:  # noqa: BLE001 - an unreadable file leaves its section empty
                log.warning("report: cannot read %s: %s", path, exc)
    data.validation = _read_json(store.run_file(run_date, "validation.json"))
    data.validation_outputs = _read_json(store.run_file(run_date, "validation_outputs.json"))
    for name in ("validation_raw.html", "validation_features.html", "validation_outputs.html"):
        if store.run_file(run_date, name) is not None:
            data.links[name] = name  # beside report.html in the run folder
    _warehouse_inputs(data, url)
    if with_map:
        _latent_inputs(data)
    return data


# ---------------------------------------------------------------------------------------------
# derived numbers
# ---------------------------------------------------------------------------------------------
def _base_stats(data: ReportData) -> dict[str, dict[str, float]]:
    """Overall mean and share of empty values per feature (raw units), from the features snapshot."""
    out: dict[str, dict[str, float]] = {}
    if data.features is None:
        return out
    for f in data.spec.features:
        if f.name not in data.features:
            continue
        col = data.features[f.name]
        entry = {"missing_share": float(col.isna().mean()) if len(col) else 0.0}
        if f.type != "categorical":
            v = pd.to_numeric(col, errors="coerce")
            entry["mean"] = float(v.mean()) if v.notna().any() else float("nan")
        out[f.name] = entry
    return out


def _sizes(frame: pd.DataFrame | None) -> dict[int, int]:
    if frame is None:
        return {}
    return {int(k): int(v) for k, v in frame["segment_id"].value_counts().items()}


def transition_matrix(previous: pd.DataFrame, current: pd.DataFrame) -> dict[str, Any]:
    """Customers by (previous segment, current segment), for customers in both runs; plus those
    new tonight (per current segment) and those gone since (per previous segment)."""
    prev = pd.Series(previous["segment_id"].to_numpy(), index=previous["customer_id"].astype(str).to_numpy())
    now = pd.Series(current["segment_id"].to_numpy(), index=current["customer_id"].astype(str).to_numpy())
    common = now.index.intersection(prev.index)
    rows = sorted(int(s) for s in prev.unique())
    cols = sorted(int(s) for s in now.unique())
    counts = pd.crosstab(prev[common].to_numpy(), now[common].to_numpy()).reindex(index=rows, columns=cols, fill_value=0)
    new = now[now.index.difference(prev.index)].value_counts()
    gone = prev[prev.index.difference(now.index)].value_counts()
    matrix = counts.to_numpy().astype("int64")
    stayed = sum(int(counts.loc[s, s]) for s in rows if s in cols)
    return {
        "from": rows, "to": cols, "counts": matrix,
        "new": [int(new.get(c, 0)) for c in cols], "gone": [int(gone.get(r, 0)) for r in rows],
        "common": len(common), "movers": int(len(common) - stayed),
    }


def segment_traits(p: dict[str, Any], spec: Spec, base: dict[str, dict[str, float]], limit: int = MAX_TRAITS
                   ) -> list[dict[str, Any]]:
    """The lines "what sets the segment apart", most distinctive first: each a dict with text
    parts (what, seg, overall, words), effect and direction."""
    items = []
    feats = p.get("features", {})
    for f in spec.features:
        entry = feats.get(f.name)
        if not entry or f.type == "categorical":
            continue
        eff = entry.get("effect")
        b = base.get(f.name, {})
        seg_missing, base_missing = entry.get("missing_share"), b.get("missing_share")
        if _finite(seg_missing) and _finite(base_missing) and (
                abs(seg_missing - base_missing) >= MISSING_GAP or (not _finite(eff) and seg_missing > base_missing)):
            items.append({
                "feature": f.name, "effect": None, "score": abs(seg_missing - base_missing) * 1.2,
                "what": short_description(f), "stat": "no value for", "seg": fmt_pct(seg_missing, 0),
                "overall": fmt_pct(base_missing, 0), "title": f.description,
                "words": "more often empty" if seg_missing > base_missing else "less often empty",
                "direction": "none", "missing": True,
            })
        if not _finite(eff) or abs(eff) < MIN_SHOWN_EFFECT:
            continue
        what = feature_title(f)
        if f.type == "binary":
            stat, seg_v, base_v = "share", entry.get("mean"), b.get("mean")
        else:
            stat, seg_v, base_v = "median", entry.get("median"), entry.get("base_median")
            # equal medians say nothing (a rate that is 0 for most customers): compare averages
            if _finite(seg_v) and _finite(base_v) and fmt_value(seg_v, f) == fmt_value(base_v, f) \
                    and _finite(entry.get("mean")) and _finite(b.get("mean")):
                stat, seg_v, base_v = "average", entry.get("mean"), b.get("mean")
        items.append({
            "feature": f.name, "effect": float(eff), "score": abs(float(eff)), "what": what, "stat": stat,
            "title": f.description,
            "seg": fmt_value(seg_v, f), "overall": fmt_value(base_v, f) if _finite(base_v) else "–",
            "words": effect_words(eff), "direction": "higher" if eff > 0 else "lower", "missing": False,
        })
    items.sort(key=lambda t: -t["score"])
    return items[:limit]


# ---------------------------------------------------------------------------------------------
# SVG charts
# ---------------------------------------------------------------------------------------------
def _svg_open(svg_id: str, width: float, height: float, title: str, desc: str, wide: bool = False) -> str:
    """``wide``: a table-like chart whose text must stay legible; its panel scrolls instead of shrinking it."""
    return (f'<svg id="{_e(svg_id)}" class="chart{" wide" if wide else ""}" role="img" aria-labelledby="{_e(svg_id)}-t {_e(svg_id)}-d" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
            f'preserveAspectRatio="xMinYMin meet">'
            f'<title id="{_e(svg_id)}-t">{_e(title)}</title><desc id="{_e(svg_id)}-d">{_e(desc)}</desc>')


def _row_label(svg_id: str, x0: float, x1: float, y: float, label: str) -> str:
    """A row label in the column [x0, x1]: left-aligned so the segment number always shows, shortened
    with an ellipsis to the column's width, and clipped to the column in case a font runs wider than
    the estimate (wide capitals did: a right-aligned label lost its segment number off the chart)."""
    return (f'<text x="{x0:.0f}" y="{y:.0f}" class="lbl" clip-path="url(#{_e(svg_id)}-lblclip)" data-max-x="{x1:.0f}">'
            f'{_e(_clip(label, _fit_chars(x1 - x0)))}<title>{_e(label)}</title></text>')


def _row_label_clip(svg_id: str, x0: float, x1: float, height: float) -> str:
    return (f'<defs><clipPath id="{_e(svg_id)}-lblclip"><rect x="{x0:.0f}" y="0" width="{x1 - x0:.0f}" '
            f'height="{height:.0f}"/></clipPath></defs>')


def size_chart_svg(data: ReportData) -> str:
    """Horizontal bars: customers per segment, with the previous run's size as a tick."""
    sizes = {int(p["segment_id"]): int(p["size"]) for p in data.profiles}
    shares = {int(p["segment_id"]): float(p.get("share", 0)) for p in data.profiles}
    prev = _sizes(data.previous)
    label_w, bar_w, value_w, row_h, top = 260, 300, 150, 28, 8
    height = top + row_h * len(sizes) + 26
    width = label_w + bar_w + value_w
    vmax = max([*sizes.values(), *prev.values(), 1])
    out = [_svg_open("size-chart", width, height, "Customers per segment",
                     "Horizontal bars, one per segment; a thin dark tick marks the previous run's size.")]
    out.append(_row_label_clip("size-chart", 4, label_w - 8, height))
    for i, (sid, size) in enumerate(sizes.items()):
        y = top + i * row_h
        w = max(1.0, bar_w * size / vmax)
        label = f"{sid} · {data.label(sid)}"
        out.append(f'<g class="row">{_row_label("size-chart", 4, label_w - 8, y + 18, label)}')
        out.append(f'<rect class="bar" data-segment="{sid}" x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
                   f'rx="2" fill="{data.colour(sid)}"><title>{_e(label)}: {fmt_int(size)} customers '
                   f'({fmt_pct(shares[sid])})</title></rect>')
        if sid in prev:
            px = label_w + bar_w * prev[sid] / vmax
            out.append(f'<line class="prev" x1="{px:.1f}" x2="{px:.1f}" y1="{y + 1}" y2="{y + row_h - 1}" '
                       f'stroke="#222" stroke-width="2"><title>previous run: {fmt_int(prev[sid])}</title></line>')
        delta = f" ({fmt_signed(size - prev[sid])})" if prev and sid in prev else " (new)" if prev else ""
        out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 18}" class="val">{fmt_int(size)} · {fmt_pct(shares[sid])}'
                   f'{_e(delta)}</text></g>')
    if prev:
        y = top + row_h * len(sizes) + 16
        out.append(f'<line x1="{label_w}" x2="{label_w}" y1="{y - 10}" y2="{y + 2}" stroke="#222" stroke-width="2"/>'
                   f'<text x="{label_w + 6}" y="{y}" class="note">= size in the previous run ({_e(data.previous_date)})</text>')
    out.append("</svg>")
    return "".join(out)


def heatmap_svg(data: ReportData) -> str:
    """Effect size of every numeric feature (columns) in every segment (rows), diverging colours."""
    feats = [f for f in data.spec.features if f.type != "categorical"]
    cell_w, cell_h, label_w, head_h = 70, 32, 260, 150
    width = label_w + cell_w * len(feats) + 140  # room for the last rotated column name
    height = head_h + cell_h * len(data.profiles) + 10
    out = [_svg_open("effect-heatmap", width, height, "Feature levels by segment",
                     "Rows are segments, columns are features; each cell is how far the segment's average lies "
                     "from the overall average, in standard deviations: orange higher, blue lower.", wide=True)]
    out.append(_row_label_clip("effect-heatmap", 22, label_w - 8, height))
    for j, f in enumerate(feats):
        x = label_w + j * cell_w + cell_w / 2
        out.append(f'<text class="colhead" transform="translate({x + 4:.0f},{head_h - 8}) rotate(-45)">'
                   f'{_e(_clip(humanize(f.name), 26))}<title>{_e(short_description(f))}</title></text>')
    for i, p in enumerate(data.profiles):
        sid = int(p["segment_id"])
        y = head_h + i * cell_h
        label = f"{sid} · {data.label(sid)}"
        out.append(f'<rect x="4" y="{y + 9}" width="12" height="12" fill="{data.colour(sid)}"/>'
                   + _row_label("effect-heatmap", 22, label_w - 8, y + 20, label))
        for j, f in enumerate(feats):
            entry = p.get("features", {}).get(f.name, {})
            eff = entry.get("effect")
            fill = diverging_colour(eff)
            x = label_w + j * cell_w
            text = (f"{float(eff):+.1f}".replace("+0.0", "0.0").replace("-0.0", "0.0") if _finite(eff) else "n/a")
            tip = (f"{label} — {short_description(f)}: {effect_words(eff)}"
                   + (f" ({float(eff):+.2f} SD)" if _finite(eff) else " (no values in this segment)"))
            out.append(f'<g class="cell"><rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" '
                       f'fill="{fill}"><title>{_e(tip)}</title></rect>'
                       f'<text x="{x + cell_w / 2:.0f}" y="{y + 21}" text-anchor="middle" '
                       f'class="num" style="fill:{_ink(fill)}">{_e(text)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def heatmap_legend_svg() -> str:
    w, h, x0, bar_w = 420, 58, 20, 380
    stops = "".join(f'<stop offset="{t:.2f}" stop-color="{diverging_colour((2 * t - 1) * HEATMAP_CLAMP)}"/>'
                    for t in np.linspace(0, 1, 9))
    out = [_svg_open("heatmap-legend", w, h, "Colour legend of the heatmap",
                     f"Blue: lower than overall; white: about the same; orange: higher; saturates at ±{HEATMAP_CLAMP:g}.")]
    out.append(f'<defs><linearGradient id="div-grad" x1="0" x2="1" y1="0" y2="0">{stops}</linearGradient></defs>')
    out.append(f'<rect x="{x0}" y="6" width="{bar_w}" height="14" fill="url(#div-grad)" stroke="#999" stroke-width=".5"/>')
    for v in (-2, -1, 0, 1, 2):
        x = x0 + bar_w * (v + HEATMAP_CLAMP) / (2 * HEATMAP_CLAMP)
        out.append(f'<line x1="{x:.0f}" x2="{x:.0f}" y1="20" y2="25" stroke="#555"/>'
                   f'<text x="{x:.0f}" y="37" text-anchor="middle" class="note">{v:+d}</text>'.replace("+0", "0"))
    out.append(f'<text x="{x0}" y="53" class="note">← lower than overall</text>'
               f'<text x="{x0 + bar_w}" y="53" text-anchor="end" class="note">higher than overall →</text>'
               f'<rect x="{x0 + bar_w / 2 - 28:.0f}" y="42" width="12" height="12" fill="#d9d9d9"/>'
               f'<text x="{x0 + bar_w / 2 - 12:.0f}" y="53" class="note">no value</text></svg>')
    return "".join(out)


def latent_map_svg(data: ReportData) -> str:
    lat = data.latent
    assert lat is not None
    xy, seg = lat["xy"], lat["segment"]
    w, h, pad = 640, 480, 36
    # frame the bulk of the customers (0.5th to 99.5th percentile); the few beyond sit on the border
    lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    lo, hi = lo - 0.06 * span, hi + 0.06 * span
    px = pad + (np.clip(xy[:, 0], lo[0], hi[0]) - lo[0]) / (hi[0] - lo[0]) * (w - 2 * pad)
    py = h - pad - (np.clip(xy[:, 1], lo[1], hi[1]) - lo[1]) / (hi[1] - lo[1]) * (h - 2 * pad)
    ex1, ex2 = lat["explained"]
    out = [_svg_open("latent-map", w, h, "Map of customers in the model's latent space",
                     f"{len(xy):,} customers drawn as dots, placed by the first two principal components of the "
                     "model's latent coordinates and coloured by segment; nearby dots are customers the model sees as similar.")]
    out.append(f'<rect x="{pad}" y="{pad / 2:.0f}" width="{w - 2 * pad}" height="{h - 1.5 * pad:.0f}" fill="#fff" stroke="#ccc"/>')
    css = "".join(f".latent .s{sid}{{fill:{data.colour(sid)}}}" for sid in data.segment_ids)
    out.append(f"<style>{css}</style><g class=\"latent\">")
    for (x, y), s in zip(zip(px, py), seg):
        out.append(f'<circle class="pt s{int(s)}" cx="{x:.1f}" cy="{y:.1f}" r="2.4"/>')
    out.append("</g>")
    for sid in data.segment_ids:  # segment number at the middle of its customers (not only colour)
        m = seg == sid
        if m.any():
            cx, cy = float(np.median(px[m])), float(np.median(py[m]))
            out.append(f'<g class="centroid"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="11" fill="#fff" stroke="{data.colour(sid)}" '
                       f'stroke-width="3"/><text x="{cx:.1f}" y="{cy + 4.5:.1f}" text-anchor="middle" class="cid">{sid}</text>'
                       f'<title>{_e(f"{sid} · {data.label(sid)}")}</title></g>')
    out.append(f'<text x="{w / 2:.0f}" y="{h - 6}" text-anchor="middle" class="note">map axis 1 ({fmt_pct(ex1, 0)} of the spread)</text>'
               f'<text transform="translate(14,{h / 2:.0f}) rotate(-90)" text-anchor="middle" class="note">map axis 2 '
               f'({fmt_pct(ex2, 0)} of the spread)</text></svg>')
    return "".join(out)


def changes_svg(data: ReportData, tm: dict[str, Any]) -> str:
    rows, cols, counts = tm["from"], tm["to"], tm["counts"]
    cell_w, cell_h, label_w, head_h = 62, 30, 250, 96
    width = label_w + cell_w * (len(cols) + 1) + 16
    height = head_h + cell_h * (len(rows) + 1) + 16
    out = [_svg_open("changes-matrix", width, height, "Customers by previous and current segment",
                     "Rows: segment in the previous run; columns: segment tonight; each cell counts customers present "
                     "in both runs. The extra row counts new customers, the extra column customers no longer present.", wide=True)]
    out.append(_row_label_clip("changes-matrix", 4, label_w - 8, height))
    out.append(f'<text x="{label_w + cell_w * len(cols) / 2:.0f}" y="16" text-anchor="middle" class="axis">tonight\'s segment →</text>')
    for j, c in enumerate([*cols, None]):
        x = label_w + j * cell_w + cell_w / 2
        text = "gone" if c is None else str(c)
        tip = "customers no longer present tonight" if c is None else f"{c} · {data.label(c)}"
        fill = "#fff" if c is None else data.colour(c)
        out.append(f'<g><rect x="{x - 9:.0f}" y="{head_h - 48}" width="18" height="6" fill="{fill}"/>'
                   f'<text x="{x:.0f}" y="{head_h - 24}" text-anchor="middle" class="lbl">{_e(text)}<title>{_e(tip)}</title></text></g>')
    out.append(f'<text x="{label_w - 8}" y="{head_h - 8}" text-anchor="end" class="axis">previous segment ↓</text>')
    off = [int(counts[i, j]) for i, r in enumerate(rows) for j, c in enumerate(cols) if r != c]
    vmax = max([*off, *tm["new"], *tm["gone"], 1])
    all_rows = [*rows, None]
    for i, r in enumerate(all_rows):
        y = head_h + i * cell_h
        label = "new customers" if r is None else f"{r} · {data.label(r)}"
        out.append(_row_label("changes-matrix", 4, label_w - 8, y + 20, label))
        values = (list(tm["new"]) + [None]) if r is None else [*counts[i].tolist(), tm["gone"][i]]
        for j, v in enumerate(values):
            if v is None:
                continue
            x = label_w + j * cell_w
            diag = r is not None and j < len(cols) and cols[j] == r
            fill = STAY_COLOUR if diag else _hex(_mix(MOVE_LOW, MOVE_HIGH, 0.15 + 0.85 * (v / vmax) ** 0.5)) if v else "#fff"
            to = "gone" if j == len(cols) else f"{cols[j]} · {data.label(cols[j])}"
            tip = f"{label} → {to}: {fmt_int(v)} customers"
            out.append(f'<g class="mcell"><rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}" '
                       f'stroke="{"#000" if diag else "#e0e0e0"}" stroke-width="{2 if diag else 1}"><title>{_e(tip)}</title></rect>'
                       f'<text x="{x + cell_w / 2:.0f}" y="{y + 20}" text-anchor="middle" class="num{" strong" if diag else ""}" '
                       f'style="fill:{_ink(fill)}">{fmt_int(v) if v else "·"}</text></g>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# HTML sections
# ---------------------------------------------------------------------------------------------
CSS = """
:root{color-scheme:light;--ink:#1b1b1b;--muted:#5a5a5a;--line:#dcdcdc;--bg:#f6f6f4;--card:#fff;--accent:#0072B2}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header.top{background:#1d2b3a;color:#fff;padding:20px 32px}
header.top h1{margin:0 0 4px;font-size:26px}
header.top p{margin:0;color:#d7dee6}
nav{background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;position:sticky;top:0;z-index:2}
nav a{color:var(--accent);margin-right:18px;text-decoration:none;font-weight:600;font-size:14px}
nav a:hover,nav a:focus{text-decoration:underline}
main{max-width:1280px;margin:0 auto;padding:8px 32px 40px}
section{margin-top:28px}
h2{font-size:21px;margin:0 0 10px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:17px;margin:0}
section>h3{margin:18px 0 6px}
.lead{color:var(--muted);margin:0 0 12px;max-width:900px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.tile .k{color:var(--muted);font-size:13px;text-transform:uppercase;letter-spacing:.03em}
.tile .v{font-size:24px;font-weight:700;line-height:1.25;overflow-wrap:anywhere}
.tile .v.small{font-size:16px}
.tile .s{font-size:13px;color:var(--muted);overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:13px;font-weight:700;vertical-align:middle}
.b-passed,.b-success,.b-yes{background:#d9f0e3;color:#0b5a2d}
.b-warning{background:#fff1c7;color:#6b4d00}
.b-failed,.b-no{background:#fbdcdc;color:#8a1010}
.b-info{background:#e3edf7;color:#163f66}
.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;overflow-x:auto}
.chart{max-width:100%;height:auto;display:block}
.chart.wide{max-width:none}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:13px;fill:#1b1b1b}
svg text.note{font-size:12px;fill:#444}
svg text.num{font-size:12px;font-variant-numeric:tabular-nums}
svg text.strong{font-weight:700}
svg text.colhead{font-size:12px}
svg text.axis{font-size:12px;font-weight:700;fill:#444}
svg text.cid{font-size:12px;font-weight:700}
svg circle.pt{fill-opacity:.6}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-left:8px solid var(--seg);border-radius:8px;padding:14px 16px}
.card .head{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.card .sid{font-weight:700;color:#fff;background:var(--seg);border-radius:6px;padding:0 8px;font-size:15px}
.card .size{color:var(--muted);font-size:14px;margin:4px 0 8px}
.card h4{font-size:14px;margin:10px 0 4px;text-transform:uppercase;letter-spacing:.03em;color:var(--muted)}
.traits{list-style:none;margin:0;padding:0}
.traits li{display:grid;grid-template-columns:84px 1fr;gap:10px;align-items:center;padding:3px 0;border-top:1px solid #f0f0f0}
.traits li:first-child{border-top:0}
.effbar{height:10px;background:#eee;border-radius:5px;position:relative}
.effbar span{position:absolute;top:0;height:10px;border-radius:5px}
.words{font-weight:700}
.hi{color:#8a4100}.lo{color:#17508a}
table{border-collapse:collapse;font-size:14px}
.card table{width:100%;margin-top:6px}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{font-weight:700;background:#fafafa}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
details summary{cursor:pointer;color:var(--accent);font-weight:600;font-size:14px;margin-top:8px}
.cats{margin:0;padding-left:18px}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0 0;padding:0;list-style:none;font-size:14px}
.legend .sw{display:inline-block;width:14px;height:14px;border-radius:7px;vertical-align:-2px;margin-right:6px}
.checks li{margin:4px 0}
.note{color:var(--muted);font-size:14px}
.mapbox{display:grid;grid-template-columns:minmax(0,660px) minmax(240px,1fr);gap:20px;align-items:start}
.mapbox .legend{flex-direction:column}
@media (max-width:1100px){.mapbox{grid-template-columns:1fr}.cards{grid-template-columns:1fr}}
footer{color:var(--muted);font-size:13px;margin-top:36px}
@media print{nav{display:none}body{background:#fff}.card,.panel,.tile{break-inside:avoid}}
"""


def _badge(status: Any) -> str:
    s = str(status or "unknown").lower()
    cls = {"passed": "b-passed", "success": "b-success", "warning": "b-warning", "failed": "b-failed",
           "yes": "b-yes", "no": "b-no"}.get(s, "b-info")
    return f'<span class="badge {cls}">{_e(s)}</span>'


def _tile(key: str, value: str, sub: str = "", small: bool = False) -> str:
    return (f'<div class="tile"><div class="k">{_e(key)}</div><div class="v{" small" if small else ""}">{value}</div>'
            f'{f"<div class=s>{sub}</div>" if sub else ""}</div>')


def _overview(data: ReportData) -> str:
    rec = data.run_record or {}
    training = rec.get("training") if isinstance(rec.get("training"), dict) else {}
    stability = rec.get("stability") if isinstance(rec.get("stability"), dict) else {}
    validation = rec.get("validation") if isinstance(rec.get("validation"), dict) else {}
    n_customers = rec.get("n_customers") or (len(data.assignments) if data.assignments is not None
                                              else sum(int(p["size"]) for p in data.profiles))
    prev_n = len(data.previous) if data.previous is not None else None
    tiles = [
        _tile("Customers", fmt_int(n_customers),
              f"{fmt_signed(int(n_customers) - prev_n)} since {_e(data.previous_date)}" if prev_n is not None else ""),
        _tile("Segments", fmt_int(len(data.profiles)),
              _e(_segment_churn_text(stability)) if "new_segment_ids" in stability else ""),
        _tile("Run", _e(data.run["run_date"]), f"id {_e(data.run.get('run_id'))}"
              + (f" · status {_badge(rec.get('status'))}" if rec.get("status") else "")),
    ]
    version = _model_version(data)
    if training or version:
        mode = str(training.get("mode") or "")
        promoted = training.get("promoted")
        sub = [_e(TRAINING_MODES.get(mode, mode) or "")]
        if training.get("reason"):
            sub.append(f"reason: {_e(training['reason'])}")
        if promoted is not None and (mode in ("retrain", "refresh") or not promoted):
            sub.append(f"new model promoted to production: {_badge('yes' if promoted else 'no')}")
        if training.get("kept_reason"):
            sub.append(_e(training["kept_reason"]))
        gate = training.get("gate") or []
        if gate:
            sub.append("gate: " + _e("; ".join(map(str, gate))))
        if training.get("model_version") and training.get("model_version") != version:
            sub.append(f"trained {_e(training['model_version'])}, scored with {_e(version)}")
        tiles.append(_tile("Model", _e(version or "–"), "<br>".join(s for s in sub if s), small=True))
    vstatus = (data.validation or {}).get("status") or validation.get("status")
    if vstatus or data.validation_outputs:
        counts = _validation_counts(data)
        sub = f"{fmt_int(counts['errors'])} failed · {fmt_int(counts['warnings'])} warning(s) · " \
              f"{fmt_int(counts['checks'])} checks"
        if validation.get("drift_detected") or (data.validation or {}).get("drift_detected"):
            sub += " · <strong>drift detected</strong>"
        tiles.append(_tile("Validation", _badge(_worst(vstatus, (data.validation_outputs or {}).get("status"),
                                                        validation.get("outputs"))), sub))
    if stability.get("common_customers"):
        tiles.append(_tile("Stability", fmt_pct(stability.get("moved_share")),
                           f"of {fmt_int(stability['common_customers'])} returning customers changed segment "
                           f"({fmt_int(stability.get('moved_customers'))}); agreement with the previous run "
                           f"(ARI) {float(stability.get('ari_vs_previous', float('nan'))):.3f}"))
    else:
        tiles.append(_tile("Stability", "first run", "no previous run to compare with", small=True))
    message = rec.get("message")
    extra = ""
    if message and message != "ok":
        extra = f'<p class="panel"><strong>Run message:</strong> {_e(message)}</p>'
    if "record" in data.notes:
        extra += f'<p class="note">Run record: {_e(data.notes["record"])}.</p>'
    return (f'<section id="overview" aria-labelledby="h-overview"><h2 id="h-overview">Overview</h2>'
            f'<div class="tiles">{"".join(tiles)}</div>{extra}</section>')


def _segment_churn_text(stability: dict[str, Any]) -> str:
    new, retired = stability.get("new_segment_ids") or [], stability.get("retired_segment_ids") or []
    by_profile = sorted({int(v["segment_id"]) for v in (stability.get("matched_by_prototype") or {}).values()
                         if isinstance(v, dict) and "segment_id" in v})
    # ids carried over by profile similarity rather than by shared customers are worth saying:
    # the marketer should know the match is by resemblance
    kept = f"ids {', '.join(map(str, by_profile))} kept by profile similarity" if by_profile else ""
    if not new and not retired:
        return "same segment ids as the previous run" + (f" ({kept})" if kept else "")
    parts = [kept] if kept else []
    if new:
        parts.append(f"new: {', '.join(map(str, new))}")
    if retired:
        parts.append(f"retired: {', '.join(map(str, retired))}")
    return "; ".join(parts)


def _worst(*statuses: Any) -> str:
    order = {"failed": 3, "warning": 2, "passed": 1}
    known = [str(s).lower() for s in statuses if s]
    return max(known, key=lambda s: order.get(s, 0)) if known else "unknown"


def _stages(data: ReportData) -> list[tuple[str, dict[str, Any]]]:
    stages = []
    v = data.validation or {}
    for name in ("raw", "features"):
        if isinstance(v.get(name), dict):
            stages.append((name, v[name]))
    if isinstance(data.validation_outputs, dict):
        stages.append(("outputs", data.validation_outputs))
    return stages


def _validation_counts(data: ReportData) -> dict[str, int]:
    total = {"checks": 0, "passed": 0, "errors": 0, "warnings": 0}
    for _, stage in _stages(data):
        for k in total:
            total[k] += int((stage.get("counts") or {}).get(k, 0) or 0)
    return total


def _legend(data: ReportData) -> str:
    return '<ul class="legend" aria-label="Segment colours">' + "".join(
        f'<li><span class="sw" style="background:{data.colour(sid)}"></span>{sid} · {_e(data.label(sid))}</li>'
        for sid in data.segment_ids) + "</ul>"


def _card(data: ReportData, p: dict[str, Any], base: dict[str, dict[str, float]], tm: dict[str, Any] | None) -> str:
    sid = int(p["segment_id"])
    colour = data.colour(sid)
    size_text = f"{fmt_int(p['size'])} customers · {fmt_pct(p.get('share'))} of all"
    if tm is not None and sid in tm["to"]:
        j = tm["to"].index(sid)
        stayed = int(tm["counts"][tm["from"].index(sid), j]) if sid in tm["from"] else 0
        joined = int(tm["counts"][:, j].sum()) - stayed
        new = int(tm["new"][j])
        left = (int(tm["counts"][tm["from"].index(sid)].sum()) - stayed + int(tm["gone"][tm["from"].index(sid)])
                if sid in tm["from"] else 0)
        if sid in tm["from"]:
            parts = [f"{fmt_int(n)} {what}" for n, what in ((joined, "moved in"), (new, "new"), (left, "left"))
                     if n]
            size_text += (f" · {fmt_signed(joined + new - left)} since {_e(data.previous_date)}"
                          + (f" ({', '.join(parts)})" if parts else ""))
        else:
            size_text += " · <strong>new segment</strong> since the previous run"
    if data.assignments is not None:
        probs = data.assignments.loc[data.assignments["segment_id"] == sid, "segment_probability"]
        runner = data.assignments.loc[data.assignments["segment_id"] == sid, "runner_up_segment_id"]
        if len(probs):
            conf = f"How sure the model is (median): {fmt_pct(float(probs.median()), 0)}"
            if runner.notna().any():
                top = int(runner.mode().iloc[0])
                conf += f" · closest other segment: {top} · {_e(data.label(top))}"
            size_text += f'<br><span class="note">{conf}</span>'
    traits = segment_traits(p, data.spec, base)
    lis = []
    for t in traits:
        cls = {"higher": "hi", "lower": "lo"}.get(t["direction"], "")
        if t["effect"] is not None:
            mag = min(abs(t["effect"]) / HEATMAP_CLAMP, 1.0) * 50
            left = 50 if t["effect"] > 0 else 50 - mag
            sd_text = f"{t['effect']:+.2f} standard deviations"
            bar = (f'<div class="effbar" title="{_e(sd_text)}">'
                   f'<span style="left:{left:.0f}%;width:{mag:.0f}%;background:{diverging_colour(t["effect"])}"></span>'
                   f'<span style="left:50%;width:1px;background:#555"></span></div>')
        else:
            bar = '<div class="effbar" title="share of empty values"></div>'
        lis.append(f'<li title="{_e(t.get("title"))}">{bar}<div>{_e(t["what"])}: {_e(t["stat"])} <strong>{_e(t["seg"])}</strong> vs '
                   f'{_e(t["overall"])} overall <span class="words {cls}">({_e(t["words"])})</span></div></li>')
    traits_html = (f'<ul class="traits">{"".join(lis)}</ul>' if lis else
                   '<p class="note">No feature stands out: these customers look like the customer base as a whole.</p>')
    cats = []
    for f in data.spec.features:
        top = p.get("features", {}).get(f.name, {}).get("top") if f.type == "categorical" else None
        if top:
            items = ", ".join(
                f'{_e(c["value"])} {fmt_pct(c.get("share"))}'
                + (f' <span class="note">({float(c["lift"]):.1f}× overall)</span>' if _finite(c.get("lift")) else "")
                for c in top)
            cats.append(f"<li>{_e(short_description(f))}: {items}</li>")
    cats_html = f'<h4>Top categories</h4><ul class="cats">{"".join(cats)}</ul>' if cats else ""
    rows = []
    for f in data.spec.features:
        entry = p.get("features", {}).get(f.name)
        if not entry or f.type == "categorical":
            continue
        if f.type == "binary":
            seg_v, base_v = entry.get("mean"), base.get(f.name, {}).get("mean")
        else:
            seg_v, base_v = entry.get("median"), entry.get("base_median")
        empty = entry.get("missing_share")
        rows.append(f'<tr><td title="{_e(f.description)}">{_e(feature_title(f))}{" (share)" if f.type == "binary" else ""}</td>'
                    f'<td class="n">{fmt_value(seg_v, f)}</td><td class="n">{fmt_value(base_v, f)}</td>'
                    f'<td>{_e(effect_words(entry.get("effect")))}</td>'
                    f'<td class="n">{fmt_pct(empty, 0) if _finite(empty) and empty > 0 else ""}</td></tr>')
    table = (f'<details><summary>Typical values of every feature</summary><table><thead><tr><th>Feature</th>'
             f'<th class="n">This segment (median)</th><th class="n">Overall</th><th>Difference</th><th class="n">Empty</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table></details>')
    return (f'<article class="card" id="segment-{sid}" style="--seg:{colour}" aria-labelledby="seg-h-{sid}">'
            f'<div class="head"><span class="sid">{sid}</span><h3 id="seg-h-{sid}">{_e(p.get("label"))}</h3></div>'
            f'<p class="size">{size_text}</p><h4>What sets it apart</h4>{traits_html}{cats_html}{table}</article>')


def _cards(data: ReportData, tm: dict[str, Any] | None) -> str:
    base = _base_stats(data)
    return (f'<section id="segments" aria-labelledby="h-segments"><h2 id="h-segments">Segments</h2>'
            f'<p class="lead">One card per segment. "What sets it apart" lists the features on which the segment differs '
            f'most from the whole customer base; "much higher/lower" means a large difference, "slightly" a small one '
            f'(bar: orange higher, blue lower).</p>'
            f'<div class="cards">{"".join(_card(data, p, base, tm) for p in data.profiles)}</div></section>')


def _glance(data: ReportData) -> str:
    legend_note = ("Each cell is how far the segment's average lies from the average of all customers, in standard "
                   "deviations (money and counts on a log scale, as the model sees them): orange higher, blue lower. "
                   "Hover a cell or a column name for its meaning. Categorical features are on the segment cards.")
    return (f'<section id="glance" aria-labelledby="h-glance"><h2 id="h-glance">At a glance</h2>'
            f'<div class="panel"><h3>Customers per segment</h3>{size_chart_svg(data)}</div>'
            f'<div class="panel" style="margin-top:16px"><h3>Feature levels by segment</h3><p class="note">{legend_note}</p>'
            f'{heatmap_svg(data)}{heatmap_legend_svg()}</div></section>')


def _map(data: ReportData) -> str:
    head = '<section id="map" aria-labelledby="h-map"><h2 id="h-map">Map of customers</h2>'
    if data.latent is None:
        return f'{head}<p class="note">No map: {_e(data.notes.get("map", "not computed"))}.</p></section>'
    lat = data.latent
    shown = len(lat["xy"])
    sample = (f"a random sample of {fmt_int(shown)} of the {fmt_int(lat['n_total'])} customers" if shown < lat["n_total"]
              else f"all {fmt_int(shown)} customers")
    return (f'{head}<div class="panel mapbox"><div>{latent_map_svg(data)}</div><div><h3>Segments</h3>{_legend(data)}'
            f'<p class="note">Each dot is a customer ({sample}), placed by the model '
            f'({_e(lat.get("model_version"))}) so that customers it sees as similar lie close together. The two axes '
            f'are the main directions in which customers differ in the model\'s view (a principal-component projection '
            f'of its latent space); they have no unit. Circled numbers mark the middle of each segment; where colours '
            f'mix, customers sit between two segments.</p></div></div></section>')


def _renamed(data: ReportData) -> str:
    """Segments whose label changed since the previous run, with the reason the publish step
    recorded (``label_change`` in profiles.json); labels are otherwise kept from night to night."""
    items = []
    for p in data.profiles:
        sid = int(p["segment_id"])
        change = p.get("label_change") if isinstance(p.get("label_change"), dict) else {}
        old = change.get("previous_label") or data.previous_labels.get(sid)
        if old is not None and old != data.label(sid):
            why = f" ({_e(change['reason'])})" if change.get("reason") else ""
            items.append(f"<li>{sid}: renamed from “{_e(old)}” to “{_e(data.label(sid))}”{why}</li>")
    if not items:
        return '<p class="note">No segment was renamed: each segment seen in the previous run kept its label.</p>'
    return (f'<h3>Renamed segments</h3><p class="note">A segment keeps its label from run to run unless the segment '
            f'itself really changed.</p><ul>{"".join(items)}</ul>')


def _changes(data: ReportData) -> tuple[str, dict[str, Any] | None]:
    head = '<section id="changes" aria-labelledby="h-changes"><h2 id="h-changes">Changes since the previous run</h2>'
    if data.previous is None or data.assignments is None:
        why = data.notes.get("changes") or data.notes.get("record") or "the previous run's assignments are not available"
        return f'{head}<p class="note">No comparison: {_e(why)}.</p></section>', None
    tm = transition_matrix(data.previous, data.assignments)
    common = tm["common"]
    lead = (f'<p class="lead">Previous run: {_e(data.previous_date)}. Of the {fmt_int(common)} customers in both runs, '
            f'<strong>{fmt_int(tm["movers"])}</strong> ({fmt_pct(tm["movers"] / common if common else 0)}) changed segment; '
            f'{_customers(sum(tm["new"]))} new and {_customers(sum(tm["gone"]))} no longer present. '
            f'Rows: segment in the previous run; columns: segment tonight. Grey boxed cells on the diagonal are customers '
            f'who stayed; orange cells are customers who moved, joined or left (darker: more).</p>')
    moves = []
    if tm["movers"]:
        flat = [(int(tm["counts"][i, j]), r, c) for i, r in enumerate(tm["from"]) for j, c in enumerate(tm["to"])
                if r != c and tm["counts"][i, j] > 0]
        for n, r, c in sorted(flat, reverse=True)[:5]:
            moves.append(f"<li>{_customers(n)}: {r} · {_e(data.label(r))} → {c} · {_e(data.label(c))}</li>")
    moves_html = f'<h3>Largest moves</h3><ul>{"".join(moves)}</ul>' if moves else ""
    relabel_html = _renamed(data)
    return (f'{head}{lead}<div class="panel">{changes_svg(data, tm)}</div>{moves_html}{relabel_html}</section>', tm)


def _validation(data: ReportData) -> str:
    head = '<section id="validation" aria-labelledby="h-validation"><h2 id="h-validation">Data validation</h2>'
    stages = _stages(data)
    if not stages:
        rec_v = (data.run_record or {}).get("validation")
        status = f" (run record: {_e(json.dumps(rec_v))})" if rec_v else ""
        return f'{head}<p class="note">No validation results in the run folder{status}.</p></section>'
    rows, issues = [], []
    for name, stage in stages:
        c = stage.get("counts") or {}
        link = {"raw": "validation_raw.html", "features": "validation_features.html",
                "outputs": "validation_outputs.html"}.get(name, "")
        details = f'<a href="{_e(data.links[link])}">details</a>' if link in data.links else ""
        drift = " · drift detected" if stage.get("drift_detected") else ""
        rows.append(f'<tr><td>{_e(name)}</td><td>{_badge(stage.get("status"))}</td><td class="n">{fmt_int(c.get("checks", 0))}</td>'
                    f'<td class="n">{fmt_int(c.get("passed", 0))}</td><td class="n">{fmt_int(c.get("errors", 0))}</td>'
                    f'<td class="n">{fmt_int(c.get("warnings", 0))}</td><td>{details}{_e(drift)}</td></tr>')
        for check in stage.get("checks") or []:
            if check.get("success"):
                continue
            sev = "failed" if check.get("severity") == "error" else "warning"
            issues.append(f'<li>{_badge(sev)} <strong>{_e(name)}</strong>: {_e(check.get("message") or check.get("check"))}</li>')
    table = (f'<div class="panel"><table><caption class="note" style="text-align:left">Checks by stage</caption><thead><tr>'
             f'<th>Stage</th><th>Status</th><th class="n">Checks</th><th class="n">Passed</th><th class="n">Failed</th>'
             f'<th class="n">Warnings</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    issue_html = (f'<h3>Failed and warned checks</h3><ul class="checks">{"".join(issues)}</ul>' if issues
                  else '<p class="note">Every check passed.</p>')
    return f"{head}{table}{issue_html}</section>"


def _history(data: ReportData) -> str:
    if not data.history:
        return ""
    rows = []
    for r in data.history:
        st = r.get("stability") if isinstance(r.get("stability"), dict) else {}
        tr = r.get("training") if isinstance(r.get("training"), dict) else {}
        moved = fmt_pct(st.get("moved_share")) if st.get("common_customers") else "–"
        current = ' <span class="badge b-info">this run</span>' if r.get("run_id") == data.run.get("run_id") else ""
        msg = r.get("message") if r.get("status") != "success" or (r.get("message") not in (None, "", "ok")) else ""
        rows.append(f'<tr><td>{_e(r.get("run_date"))}{current}</td><td>{_badge(r.get("status"))}</td>'
                    f'<td class="n">{fmt_int(r.get("n_customers")) if r.get("n_customers") is not None else "–"}</td>'
                    f'<td class="n">{fmt_int(r.get("n_segments")) if r.get("n_segments") is not None else "–"}</td>'
                    f'<td class="n">{moved}</td><td>{_e(tr.get("mode") or tr.get("failed_step") or "")}</td>'
                    f'<td>{_e(_clip(str(msg or ""), 160))}</td></tr>')
    return (f'<section id="history" aria-labelledby="h-history"><h2 id="h-history">Recent runs</h2><div class="panel">'
            f'<table><thead><tr><th>Run date</th><th>Status</th><th class="n">Customers</th><th class="n">Segments</th>'
            f'<th class="n">Changed segment</th><th>Model</th><th>Message</th></tr></thead><tbody>{"".join(rows)}</tbody>'
            f'</table></div></section>')


def render_html(data: ReportData) -> str:
    """The whole page as one string (pure: no I/O)."""
    changes_html, tm = _changes(data)
    title = f"Customer segments · {data.spec.name} · {data.run['run_date']}"
    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in (
        ("overview", "Overview"), ("glance", "At a glance"), ("segments", "Segments"), ("map", "Map"),
        ("changes", "Changes"),
        ("validation", "Validation"), ("history", "Recent runs")) if a != "history" or data.history)
    body = "".join([_overview(data), _glance(data), _cards(data, tm), _map(data), changes_html, _validation(data),
                    _history(data)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="segmentation.report">'
            f'<title>{_e(title)}</title><style>{CSS}</style></head><body>'
            f'<header class="top"><h1>Customer segments — {_e(data.run["run_date"])}</h1>'
            f'<p>{_e(data.spec.name)} · run {_e(data.run.get("run_id"))} · {fmt_int(sum(int(p["size"]) for p in data.profiles))} '
            f'customers in {len(data.profiles)} segments</p></header>'
            f'<nav aria-label="Sections">{nav}</nav><main>{body}'
            f'<footer>Generated {_e(data.generated_at)} by segmentation.report. Segment ids are kept stable from run '
            f'to run; labels are generated from the features that set each segment apart and are kept from run to run '
            f'unless the segment really changes.</footer></main></body></html>\n')


# ---------------------------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------------------------
def build_report(url: str | None, run: dict[str, Any], *, out_path: Path | None = None) -> Path:
    """Build the run's HTML report and return its path.

    ``run`` is the dict of ``segmentation.pipeline.start_run`` (run_id, run_date, artifacts,
    spec_path). By default the page is written to ``<run folder>/report.html`` and stored with
    the run's artifacts (``store.put_run_file``); ``out_path`` writes it elsewhere instead
    (nothing is stored then). Raises ``ReportError`` when the run has no profiles yet."""
    from segmentation.artifacts import open_store
    from segmentation.warehouse import default_url

    data = gather(url or default_url(), run)
    page = render_html(data)
    store = open_store(run.get("artifacts"))
    target = Path(out_path) if out_path is not None else store.run_dir(run["run_date"]) / REPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    if out_path is None:
        store.put_run_file(run["run_date"], target)
    log.info("report: %s (%d segments, %.0f kB)", target, len(data.profiles), target.stat().st_size / 1024)
    return target


def run_for_date(run_date: dt.date | str, artifacts: str | None = None, spec_path: str | None = None) -> dict[str, Any]:
    """The run dict of a past run (what ``start_run`` gave it), enough for ``build_report``."""
    from segmentation.artifacts import open_store

    d = run_date if isinstance(run_date, dt.date) else dt.date.fromisoformat(str(run_date))
    if isinstance(d, dt.datetime):
        d = d.date()
    spec = load_spec(spec_path)
    return {"run_id": f"{spec.name}-{d.isoformat()}", "run_date": d.isoformat(), "spec_path": spec.path,
            "artifacts": str(open_store(artifacts).root)}


def build_report_for_date(url: str | None, run_date: dt.date | str, artifacts: str | None = None,
                          spec_path: str | None = None, *, out_path: Path | None = None) -> Path:
    """``build_report`` for an earlier run, identified by its date (run_id = "<spec name>-<date>")."""
    return build_report(url, run_for_date(run_date, artifacts, spec_path), out_path=out_path)


__all__ = (
    "ReportError",
    "build_report",
    "build_report_for_date",
    "gather",
    "latent_map",
    "render_html",
    "run_for_date",
    "transition_matrix",
)
