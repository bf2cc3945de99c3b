"""Model artifact on disk: ``weights.safetensors`` + ``metadata.json``. Nothing is ever unpickled.

metadata.json holds the config, the fitted preprocessing, the training history and metrics, the
library versions, and a fingerprint of the training data, so a model directory explains itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# 2: missing-value indicators only for the features with missing values at fit time (the encoder's
# input width changed); version 1 artifacts (an indicator for every feature) still load
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS = "weights.safetensors"
METADATA = "metadata.json"


class ArtifactError(RuntimeError):
    """A model directory that is missing, incomplete, corrupt or from an incompatible version."""


def library_versions() -> dict[str, str]:
    import sklearn
    import torch

    import segmentation

    return {
        "segmentation": segmentation.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def data_fingerprint(df: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    """Order-sensitive hash of the training columns, with the shape: tells whether two runs saw the same data."""
    h = hashlib.sha256()
    for c in columns:
        h.update(c.encode())
        h.update(pd.util.hash_pandas_object(df[c], index=False).to_numpy().tobytes())
    return {"sha256": h.hexdigest(), "rows": int(len(df)), "columns": list(columns)}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_artifact(path: str | os.PathLike, state_dict: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write both files into ``path`` atomically: a reader sees the old model or the new one, never half."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = dict(metadata, format_version=FORMAT_VERSION)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "concrete-gmvae"})
        with open(os.path.join(tmp, METADATA), "w") as f:
            # key order matters (feature order defines the tensor layout): never sort_keys here
            json.dump(meta, f, indent=2, default=_json_default, allow_nan=True)
        # metadata last: its presence marks a complete artifact
        os.replace(os.path.join(tmp, WEIGHTS), out / WEIGHTS)
        os.replace(os.path.join(tmp, METADATA), out / METADATA)
    return out


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"model directory {p} does not exist")
    for name in (WEIGHTS, METADATA):
        if not (p / name).is_file():
            raise ArtifactError(f"model directory {p} is incomplete: {name} is missing")
    try:
        meta = json.loads((p / METADATA).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{p / METADATA} is not valid JSON ({exc}); the artifact is corrupt") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{p / METADATA} holds a JSON {type(meta).__name__}, not an object; the artifact is corrupt")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{p}: artifact format {meta.get('format_version')!r} is not supported by this version "
            f"(it reads formats {', '.join(map(str, READABLE_VERSIONS))}); retrain the model or upgrade"
        )
    try:
        state = load_file(str(p / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{p / WEIGHTS} cannot be read ({exc}); the artifact is corrupt") from exc
    return state, meta
