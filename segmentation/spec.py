"""The feature spec: the one place where features, their types and their checks are declared.

The same spec is read by the dbt feature model's tests, by validation (suites are generated from
it), by the model (likelihood head per type) and by the profiles / report (marketer wording).
A spec is a small YAML file; ``segmentation/specs/online_retail.yaml`` is the demo's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FEATURE_TYPES = ("continuous", "money", "count", "binary", "categorical")
SEVERITIES = ("error", "warning")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

DEFAULT_SPEC = Path(__file__).parent / "specs" / "online_retail.yaml"


class SpecError(ValueError):
    """The spec file is malformed; the message names the file, the entry and what to fix."""


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise: config never reaches SQL raw."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise SpecError(
            f"{what} {name!r} is not a valid identifier: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return name


@dataclass(frozen=True)
class Checks:
    """Per-feature validation rules (used to build the Great Expectations suite)."""

    min: float | None = None
    max: float | None = None
    max_null_share: float = 0.0
    allowed: tuple[str, ...] | None = None
    severity: str = "error"


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    description: str = ""
    # Words a marketer reads in a label when the segment is high / low on this feature,
    # e.g. "recent" / "lapsed" for recency. Empty: the report falls back to the name.
    high_label: str = ""
    low_label: str = ""
    checks: Checks = field(default_factory=Checks)
    # traits ("feature:higher" / "feature:lower") that make this feature's own trait go without
    # saying: a label that already holds one of them does not add this feature's words
    implied_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Relation:
    schema: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Spec:
    name: str
    entity_key: str
    features: tuple[Feature, ...]
    features_relation: Relation
    sources: dict[str, Relation]
    output_schema: str = "segments"
    model: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def feature_types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.features}

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def _relation(raw: Any, where: str) -> Relation:
    if not isinstance(raw, dict) or "schema" not in raw or "table" not in raw:
        raise SpecError(f"{where}: expected a mapping with 'schema' and 'table'")
    return Relation(
        check_identifier(raw["schema"], f"{where}.schema"), check_identifier(raw["table"], f"{where}.table")
    )


def _implied_by(raw: Any, where: str) -> tuple[str, ...]:
    """``implied_by``: a list of traits written ``feature:higher`` or ``feature:lower``."""
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise SpecError(f"{where}: implied_by must be a list of traits like 'tenure_days:lower'")
    for t in items:
        name, sep, direction = t.rpartition(":")
        if not sep or not name or direction not in ("higher", "lower"):
            raise SpecError(f"{where}: implied_by entry {t!r} must read 'feature:higher' or 'feature:lower'")
    return tuple(items)


def parse_spec(data: dict[str, Any], path: str = "<dict>") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping")
    missing = [k for k in ("name", "entity_key", "features", "features_relation") if k not in data]
    if missing:
        raise SpecError(f"{path}: missing required key(s): {', '.join(missing)}")
    feats = []
    seen = set()
    for i, raw in enumerate(data["features"] or []):
        where = f"{path}: features[{i}]"
        if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
            raise SpecError(f"{where}: each feature needs 'name' and 'type'")
        name = check_identifier(raw["name"], f"{where}.name")
        if name in seen:
            raise SpecError(f"{where}: feature {name!r} is declared twice")
        seen.add(name)
        ftype = raw["type"]
        if ftype not in FEATURE_TYPES:
            raise SpecError(
                f"{where}: feature {name!r} has unknown type {ftype!r}; use one of {', '.join(FEATURE_TYPES)}"
            )
        rc = raw.get("checks") or {}
        unknown = set(rc) - {"min", "max", "max_null_share", "allowed", "severity"}
        if unknown:
            raise SpecError(f"{where}: unknown check(s) {sorted(unknown)} for feature {name!r}")
        sev = rc.get("severity", "error")
        if sev not in SEVERITIES:
            raise SpecError(f"{where}: severity {sev!r} for {name!r} must be 'error' or 'warning'")
        checks = Checks(
            min=rc.get("min"),
            max=rc.get("max"),
            max_null_share=float(rc.get("max_null_share", 0.0)),
            allowed=tuple(rc["allowed"]) if rc.get("allowed") is not None else None,
            severity=sev,
        )
        feats.append(
            Feature(
                name=name,
                type=ftype,
                description=str(raw.get("description", "")),
                high_label=str(raw.get("high_label", "")),
                low_label=str(raw.get("low_label", "")),
                checks=checks,
                implied_by=_implied_by(raw.get("implied_by"), f"{where}: feature {name!r}"),
            )
        )
    if not feats:
        raise SpecError(f"{path}: 'features' is empty; declare at least one feature")
    declared = {f.name for f in feats}
    for f in feats:
        for t in f.implied_by:
            other = t.rpartition(":")[0]
            if other not in declared or other == f.name:
                raise SpecError(f"{path}: feature {f.name!r}: implied_by {t!r} names "
                                + ("the feature itself" if other == f.name else f"no declared feature {other!r}"))
    sources = {
        check_identifier(k, f"{path}: sources key"): _relation(v, f"{path}: sources.{k}")
        for k, v in (data.get("sources") or {}).items()
    }
    return Spec(
        name=str(data["name"]),
        entity_key=check_identifier(data["entity_key"], f"{path}: entity_key"),
        features=tuple(feats),
        features_relation=_relation(data["features_relation"], f"{path}: features_relation"),
        sources=sources,
        output_schema=check_identifier(data.get("output_schema", "segments"), f"{path}: output_schema"),
        model=dict(data.get("model") or {}),
        path=path,
    )


def load_spec(path: str | Path | None = None) -> Spec:
    """Load a spec file (default: the Online Retail demo spec shipped with the package)."""
    p = Path(path) if path else DEFAULT_SPEC
    if not p.exists():
        raise SpecError(f"spec file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML: {exc}") from exc
    return parse_spec(data, str(p))
