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

# the spec's ``model:`` keys (ConcreteGMVAE arguments) and the type each must have; the pipeline
# passes exactly these on, so a typo or a wrong type is caught when the spec is read, not hours
# later when training starts
MODEL_KEYS: dict[str, tuple[type, ...]] = {
    "n_segments": (int,), "latent_dim": (int,), "hidden": (list,), "estimator": (str,), "tau_start": (int, float),
    "tau_min": (int, float), "tau_decay": (int, float), "kl_anneal_epochs": (int,), "epochs": (int,),
    "batch_size": (int,), "learning_rate": (int, float), "patience": (int,), "validation_fraction": (int, float),
    "min_level_count": (int,), "seed": (int,), "device": (str,), "n_threads": (int,), "bf16": (bool,),
    "init": (str,), "pretrain_epochs": (int,), "pretrain_noise": (int, float), "start_clusters": (str,),
    "finetune_learning_rate": (int, float), "prior_covariance": (str,),
}


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
    # a source's raw-table rules (the shape of validation.rules.DEMO_SOURCE_RULES' entries), when
    # the spec declares them
    rules: dict[str, Any] | None = field(default=None, compare=False, hash=False)

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


def _relation(raw: Any, where: str, rules_allowed: bool = False) -> Relation:
    if not isinstance(raw, dict) or "schema" not in raw or "table" not in raw:
        raise SpecError(f"{where}: expected a mapping with 'schema' and 'table'")
    known = {"schema", "table"} | ({"rules"} if rules_allowed else set())
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    rules = raw.get("rules")
    if rules is not None:
        from validation.rules import RulesError, source_rules

        try:  # parsed here only to refuse a bad spec early; validation parses it again
            source_rules(rules, where)
        except (RulesError, TypeError, ValueError) as exc:
            raise SpecError(f"{where}.rules: {exc}") from None
    return Relation(
        check_identifier(raw["schema"], f"{where}.schema"), check_identifier(raw["table"], f"{where}.table"),
        dict(rules) if rules is not None else None,
    )


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping (key: value lines), not {type(raw).__name__} {raw!r}")
    return raw


def _number(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise SpecError(f"{where} must be a number, not {raw!r}")
    return raw


def _words(raw: Any, where: str) -> str:
    """A label word (high_label / low_label): absent is fine, but given it must be real text."""
    if raw is None:
        return ""
    if not isinstance(raw, str) or not raw.strip():
        raise SpecError(f"{where} must be a non-empty text (or left out), not {raw!r}")
    return raw.strip()


def _model(raw: Any, where: str) -> dict[str, Any]:
    model = _mapping(raw, where)
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; known: {', '.join(MODEL_KEYS)}")
    for key, value in model.items():
        if value is None:  # "not set": the estimator's default
            continue
        if key == "hidden" and isinstance(value, tuple):  # a spec written as a Python dict
            value = list(value)
        types = MODEL_KEYS[key]
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            want = " or ".join("a whole number" if t is int else "a number" if t is float else "a list" if t is list
                               else "true/false" if t is bool else "text" for t in types)
            raise SpecError(f"{where}.{key} must be {want}, not {value!r}")
        if key == "hidden" and not (value and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in value)):
            raise SpecError(f"{where}.hidden must be a list of positive layer widths like [256, 128], not {value!r}")
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.items() if v is not None}
    # the values too, by the estimator's own rules: a bad one (estimator: Exact, pretrain_noise: 1.5)
    # used to pass here, be ignored on refresh nights and fail the weekly retrain days later
    from segmentation.model.estimator import ConcreteGMVAE

    try:
        ConcreteGMVAE(**{k: tuple(v) if k == "hidden" else v for k, v in settings.items()})._check_config()
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return settings


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
    if data["features"] is not None and not isinstance(data["features"], list):
        raise SpecError(f"{path}: 'features' must be a list of features, not {type(data['features']).__name__}")
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
        rc = _mapping(raw.get("checks"), f"{where}: feature {name!r}: checks")
        unknown = set(rc) - {"min", "max", "max_null_share", "allowed", "severity"}
        if unknown:
            raise SpecError(f"{where}: unknown check(s) {sorted(unknown)} for feature {name!r}")
        sev = rc.get("severity", "error")
        if sev not in SEVERITIES:
            raise SpecError(f"{where}: severity {sev!r} for {name!r} must be 'error' or 'warning'")
        share = _number(rc.get("max_null_share", 0.0), f"{where}: feature {name!r}: checks.max_null_share")
        if not 0.0 <= share <= 1.0:
            raise SpecError(f"{where}: feature {name!r}: checks.max_null_share must be between 0 and 1, not {share!r}")
        allowed = rc.get("allowed")
        if allowed is not None and (not isinstance(allowed, list)
                                    or not all(isinstance(v, (str, int, float)) for v in allowed)):
            raise SpecError(f"{where}: feature {name!r}: checks.allowed must be a list of values, not {allowed!r}")
        checks = Checks(
            min=_number(rc.get("min"), f"{where}: feature {name!r}: checks.min"),
            max=_number(rc.get("max"), f"{where}: feature {name!r}: checks.max"),
            max_null_share=float(share),
            allowed=tuple(allowed) if allowed is not None else None,
            severity=sev,
        )
        feats.append(
            Feature(
                name=name,
                type=ftype,
                description=str(raw.get("description", "")),
                high_label=_words(raw.get("high_label"), f"{where}: feature {name!r}: high_label"),
                low_label=_words(raw.get("low_label"), f"{where}: feature {name!r}: low_label"),
                checks=checks,
                implied_by=_implied_by(raw.get("implied_by"), f"{where}: feature {name!r}"),
            )
        )
    if not feats:
        raise SpecError(f"{path}: 'features' is empty; declare at least one feature")
    declared = {f.name: f.type for f in feats}
    for f in feats:
        for t in f.implied_by:
            other = t.rpartition(":")[0]
            if other not in declared or other == f.name:
                raise SpecError(f"{path}: feature {f.name!r}: implied_by {t!r} names "
                                + ("the feature itself" if other == f.name else f"no declared feature {other!r}"))
            if declared[other] == "categorical":
                raise SpecError(f"{path}: feature {f.name!r}: implied_by {t!r} names the categorical feature "
                                f"{other!r}, which has no higher or lower; name a numeric feature")
        if f.implied_by and f.type == "categorical":
            raise SpecError(f"{path}: feature {f.name!r}: implied_by is for numeric features (a categorical one "
                            "adds no higher/lower words to a label)")
    sources = {
        check_identifier(k, f"{path}: sources key"): _relation(v, f"{path}: sources.{k}", rules_allowed=True)
        for k, v in _mapping(data.get("sources"), f"{path}: sources").items()
    }
    return Spec(
        name=str(data["name"]),
        entity_key=check_identifier(data["entity_key"], f"{path}: entity_key"),
        features=tuple(feats),
        features_relation=_relation(data["features_relation"], f"{path}: features_relation"),
        sources=sources,
        output_schema=check_identifier(data.get("output_schema", "segments"), f"{path}: output_schema"),
        model=_model(data.get("model"), f"{path}: model"),
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
