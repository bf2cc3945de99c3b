"""Data validation for the nightly segmentation run: Great Expectations suites generated from the
feature spec, run on Arrow/pandas batches read from the warehouse.

    from validation import validate_raw, validate_features, validate_outputs, feature_reference
    res = validate_raw(url, spec, as_of=as_of, previous_row_counts=last_night.row_counts)
    res.raise_if_failed()          # ValidationFailed: str() lists the error-severity failures

Importing this package is cheap: Great Expectations (about 2 s to import) is only imported when a
validate_* function runs, never when a DAG file is parsed.
"""
from __future__ import annotations

from typing import Any

from validation.result import ValidationFailed, ValidationResult

__all__ = [
    "DEMO_SOURCE_RULES",
    "ValidationFailed",
    "ValidationResult",
    "feature_reference",
    "psi",
    "validate_features",
    "validate_outputs",
    "validate_raw",
]

_LAZY = {
    "validate_raw": "validation.raw",
    "validate_features": "validation.features",
    "validate_outputs": "validation.outputs",
    "feature_reference": "validation.drift",
    "psi": "validation.drift",
    "DEMO_SOURCE_RULES": "validation.rules",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'validation' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
