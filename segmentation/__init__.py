"""Nightly customer segmentation with a Concrete Gaussian-Mixture VAE.

Heavy modules (torch, pandas) are imported lazily so that Airflow can parse the DAG file, which
imports this package's light modules, without paying for them at parse time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ConcreteGMVAE", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from segmentation.model.estimator import ConcreteGMVAE


def __getattr__(name: str) -> Any:
    if name == "ConcreteGMVAE":
        from segmentation.model.estimator import ConcreteGMVAE

        return ConcreteGMVAE
    raise AttributeError(f"module 'segmentation' has no attribute {name!r}")
