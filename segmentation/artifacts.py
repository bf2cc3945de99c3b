"""The artifact store: models and per-run files, with a ``production`` pointer.

Layout (the same on every backend)::

    <root>/models/<version>/weights.safetensors, metadata.json
    <root>/runs/<run_date>/features.parquet, assignments.parquet, validation_*.json, ...
    <root>/production.json     {"version": ..., "history": [{"version", "run_date", "promoted_at"}]}

``production.json`` is replaced atomically (write to a temporary file, then rename), so a reader
sees the old pointer or the new one, never half of one. The local folder is the default.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PRODUCTION = "production.json"


class ArtifactStoreError(RuntimeError):
    pass


class LocalArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    # ---- models ------------------------------------------------------------------------------
    def model_dir(self, version: str) -> Path:
        return self.root / "models" / version

    def has_model(self, version: str) -> bool:
        return (self.model_dir(version) / "metadata.json").is_file()

    def models(self) -> list[dict[str, Any]]:
        """Every stored model with the run date it was trained for (from its metadata)."""
        out = []
        base = self.root / "models"
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            meta = d / "metadata.json"
            if meta.is_file():
                try:
                    info = json.loads(meta.read_text()).get("run", {})
                except json.JSONDecodeError:
                    continue
                out.append({"version": d.name, **info})
        return out

    # ---- runs --------------------------------------------------------------------------------
    def run_dir(self, run_date: dt.date | str) -> Path:
        d = self.root / "runs" / str(run_date)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---- production pointer ------------------------------------------------------------------
    def _read_pointer(self) -> dict[str, Any]:
        p = self.root / PRODUCTION
        if not p.exists():
            return {"version": None, "history": []}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactStoreError(f"{p} is corrupt ({exc}); restore it or delete it to retrain from scratch") from exc

    def production(self) -> str | None:
        return self._read_pointer().get("version")

    def production_as_of(self, run_date: dt.date) -> str | None:
        """The model that was in production for a run of ``run_date``: the latest promotion made
        for an earlier date. Reruns and backfills use it, so they repeat what that night did."""
        best = None
        for h in self._read_pointer().get("history", []):
            if h["run_date"] < str(run_date) and (best is None or h["run_date"] >= best["run_date"]):
                best = h
        return best["version"] if best else None

    def promote(self, version: str, run_date: dt.date, reason: str = "") -> None:
        if not self.has_model(version):
            raise ArtifactStoreError(f"cannot promote {version}: {self.model_dir(version)} holds no model")
        ptr = self._read_pointer()
        history = [h for h in ptr.get("history", []) if h["run_date"] != str(run_date)]
        history.append({
            "version": version,
            "run_date": str(run_date),
            "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "reason": reason,
        })
        history.sort(key=lambda h: h["run_date"])
        # the pointer names the model of the latest run date, so a backfill never demotes tonight's
        new = {"version": history[-1]["version"], "history": history}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".production-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(new, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / PRODUCTION)


def open_store(root: str | os.PathLike | None = None) -> LocalArtifactStore:
    """``root`` or ``$SEGMENT_ARTIFACTS`` or ``<SEGMENT_DATA_DIR or .data>/artifacts``."""
    root = root or os.environ.get("SEGMENT_ARTIFACTS") or Path(os.environ.get("SEGMENT_DATA_DIR") or ".data") / "artifacts"
    if str(root).startswith("s3://"):
        raise ArtifactStoreError("S3 artifact stores are not supported yet; use a local folder")
    return LocalArtifactStore(root)
