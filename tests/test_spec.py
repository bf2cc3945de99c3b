"""Spec files with the wrong kind of value (found by the break-it review: raw ValueError /
TypeError / AttributeError without the file or the entry) are refused when the spec is read, with a
SpecError naming the file, the entry and what to write instead."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from segmentation.spec import DEFAULT_SPEC, SpecError, load_spec, parse_spec

BASE = yaml.safe_load(DEFAULT_SPEC.read_text())


def _feature(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in raw["features"] if f["name"] == name)


def _set(path: str, value: Any):
    def edit(raw: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = raw
        for part in head:
            node = _feature(node, part[8:]) if part.startswith("feature:") else node.setdefault(part, {})
        node[last] = value
    return edit


CASES = [
    ("checks-not-a-mapping", _set("feature:recency_days.checks", ["min"]), "checks must be a mapping"),
    ("null-share-text", _set("feature:recency_days.checks.max_null_share", "lots"), "max_null_share must be a number"),
    ("null-share-range", _set("feature:recency_days.checks.max_null_share", 3), "between 0 and 1"),
    ("min-text", _set("feature:recency_days.checks.min", "abc"), "checks.min must be a number"),
    ("allowed-scalar", _set("feature:country.checks.allowed", 5), "checks.allowed must be a list"),
    ("model-list", _set("model", [1, 2]), "model must be a mapping"),
    ("model-epochs-text", _set("model.epochs", "many"), "model.epochs must be a whole number"),
    ("model-lr-bool", _set("model.learning_rate", True), "model.learning_rate must be"),
    ("model-hidden", _set("model.hidden", [256, "wide"]), "model.hidden must be a list of positive layer widths"),
    ("model-typo", _set("model.epoch", 10), "unknown key(s) ['epoch']"),
    ("sources-list", _set("sources", ["a"]), "sources must be a mapping"),
    ("blank-label", _set("feature:recency_days.high_label", None), None),  # absent-like: allowed
    ("space-label", _set("feature:recency_days.low_label", "   "), "low_label must be a non-empty text"),
    ("label-number", _set("feature:recency_days.low_label", 7), "low_label must be a non-empty text"),
    ("implied-by-categorical", _set("feature:recency_days.implied_by", ["country:higher"]),
     "names the categorical feature 'country'"),
    ("features-mapping", _set("features", {"a": 1}), "'features' must be a list"),
]


@pytest.mark.parametrize("name, edit, problem", CASES, ids=[c[0] for c in CASES])
def test_a_wrongly_typed_spec_entry_is_named(tmp_path: Path, name: str, edit, problem: str | None) -> None:
    raw = copy.deepcopy(BASE)
    edit(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    if problem is None:
        spec = load_spec(path)
        assert spec.feature("recency_days").high_label == ""  # the report falls back on the name
        return
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert problem in message, message


def test_the_shipped_specs_still_read() -> None:
    for path in sorted(DEFAULT_SPEC.parent.glob("*.yaml")):
        assert parse_spec(yaml.safe_load(path.read_text()), str(path)).features
