"""The artifact store: models and per-run files, with a ``production`` pointer.

Layout (the same in a local folder and on S3)::

    <root>/models/<version>/weights.safetensors, metadata.json, reference.json
    <root>/runs/<run_date>/features.parquet, assignments.parquet, validation*.json, profiles.json, ...
    <root>/production.json     {"version": ..., "history": [{"version", "run_date", "promoted_at", "reason"}]}

``production.json`` is replaced atomically: a local file is written aside and renamed; an S3 object
is replaced by one PUT, which readers see whole or not at all. Either way a reader gets the old
pointer or the new one, never half of one.

Steps work on local paths: ``model_dir(version)`` and ``run_file(run_date, name)`` return a local
path holding the files (an S3 store downloads them into its cache first), and ``add_model`` /
``put_run_file`` store what a step wrote. So an Airflow task on another worker (or a training pod)
finds what the previous task stored.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

PRODUCTION = "production.json"
_EMPTY_POINTER: dict[str, Any] = {"version": None, "history": []}


class ArtifactStoreError(RuntimeError):
    pass


def _pointer_after_promotion(ptr: dict[str, Any], version: str, run_date: dt.date, reason: str) -> dict[str, Any]:
    history = [h for h in ptr.get("history", []) if h["run_date"] != str(run_date)]
    history.append({
        "version": version,
        "run_date": str(run_date),
        "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "reason": reason,
    })
    history.sort(key=lambda h: h["run_date"])
    # the pointer names the model of the latest run date, so a backfill never demotes tonight's
    return {"version": history[-1]["version"], "history": history}


def _production_as_of(ptr: dict[str, Any], run_date: dt.date) -> str | None:
    best = None
    for h in ptr.get("history", []):
        if h["run_date"] < str(run_date) and (best is None or h["run_date"] >= best["run_date"]):
            best = h
    return best["version"] if best else None


class ArtifactStore:
    """Common behaviour; subclasses move bytes (``_read``, ``_write``, ``_list``, ``_download_dir``)."""

    cache: Path

    # ---- production pointer ------------------------------------------------------------------
    def _read_pointer(self) -> dict[str, Any]:
        raw = self._read(PRODUCTION)
        if raw is None:
            return dict(_EMPTY_POINTER)
        try:
            ptr = json.loads(raw)
            if not isinstance(ptr, dict) or "history" not in ptr:
                raise ValueError("no history")
            return ptr
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactStoreError(
                f"{self}: {PRODUCTION} is corrupt ({exc}); restore it from backup or delete it to retrain from scratch"
            ) from exc

    def production(self) -> str | None:
        return self._read_pointer().get("version")

    def production_history(self) -> list[dict[str, Any]]:
        return list(self._read_pointer().get("history", []))

    def production_as_of(self, run_date: dt.date) -> str | None:
        """The model that was in production for a run of ``run_date``: the latest promotion made for
        an earlier date. Reruns and backfills use it, so they repeat what that night did."""
        return _production_as_of(self._read_pointer(), run_date)

    def promote(self, version: str, run_date: dt.date, reason: str = "") -> None:
        if not self.has_model(version):
            raise ArtifactStoreError(f"cannot promote {version}: {self} holds no such model")
        new = _pointer_after_promotion(self._read_pointer(), version, run_date, reason)
        self._write(PRODUCTION, json.dumps(new, indent=2).encode())
        log.info("artifacts: %s promoted for run date %s; production is now %s", version, run_date, new["version"])

    # ---- models ------------------------------------------------------------------------------
    def has_model(self, version: str) -> bool:
        return self._read(f"models/{version}/metadata.json") is not None

    def models(self) -> list[dict[str, Any]]:
        """Every stored model with the run information saved in its metadata."""
        out = []
        for version in self._list("models/"):
            raw = self._read(f"models/{version}/metadata.json")
            if raw is None:
                continue
            try:
                meta = json.loads(raw)
            except ValueError:
                log.warning("artifacts: models/%s/metadata.json is corrupt; ignored", version)
                continue
            out.append({"version": version, "saved_at": meta.get("saved_at", ""), **meta.get("run", {})})
        return out

    def new_model_dir(self) -> Path:
        """A fresh local folder to save a model into before ``add_model``."""
        (self.cache / "tmp").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.cache / "tmp", prefix="model-"))

    # ---- runs --------------------------------------------------------------------------------
    def run_dir(self, run_date: dt.date | str) -> Path:
        """The local working folder of a run's files (write here, then ``put_run_file``)."""
        d = self.cache / "runs" / str(run_date)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def run_dates(self) -> list[str]:
        return sorted(self._list("runs/"))


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.cache = self.root

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    __str__ = __repr__

    def _read(self, key: str) -> bytes | None:
        p = self.root / key
        return p.read_bytes() if p.is_file() else None

    def _write(self, key: str, data: bytes) -> None:
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def _list(self, prefix: str) -> list[str]:
        d = self.root / prefix
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []

    def model_dir(self, version: str) -> Path:
        return self.root / "models" / version

    def add_model(self, version: str, src: Path) -> Path:
        final = self.model_dir(version)
        if final.exists():  # same content-addressed version already stored
            shutil.rmtree(src, ignore_errors=True)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, final)
        return final

    def put_run_file(self, run_date: dt.date | str, path: Path) -> None:
        return None  # already in place

    def run_file(self, run_date: dt.date | str, name: str) -> Path | None:
        p = self.root / "runs" / str(run_date) / name
        return p if p.exists() else None


class S3ArtifactStore(ArtifactStore):
    """S3 (or any S3-compatible endpoint) through boto3, with a local cache folder.

    ``s3://bucket/prefix``; options from the URL query or the environment:
    ``endpoint_url`` ($SEGMENT_S3_ENDPOINT_URL), ``sse`` = AES256 | aws:kms ($SEGMENT_S3_SSE),
    ``kms_key_id`` ($SEGMENT_S3_KMS_KEY_ID). Credentials come from boto3's usual chain.
    """

    def __init__(self, url: str, cache: str | os.PathLike | None = None, client: Any = None):
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ArtifactStoreError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint_url = q.get("endpoint_url") or os.environ.get("SEGMENT_S3_ENDPOINT_URL") or None
        self.sse = q.get("sse") or os.environ.get("SEGMENT_S3_SSE") or None
        self.kms_key_id = q.get("kms_key_id") or os.environ.get("SEGMENT_S3_KMS_KEY_ID") or None
        if self.sse not in (None, "AES256", "aws:kms"):
            raise ArtifactStoreError(f"sse must be AES256 or aws:kms, not {self.sse!r}")
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        default_cache = Path(os.environ.get("SEGMENT_DATA_DIR") or ".data") / "artifact-cache" / self.bucket / self.prefix
        self.cache = Path(cache or default_cache).expanduser().resolve()
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=self.endpoint_url)
        self.s3 = client

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.root!r})"

    __str__ = __repr__

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put_args(self) -> dict[str, str]:
        args = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def _read(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise ArtifactStoreError(f"{self}: cannot read {key}: {exc}") from exc

    def _write(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **self._put_args())

    def _upload(self, key: str, path: Path) -> None:
        self.s3.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=self._put_args() or None)

    def _list(self, prefix: str) -> list[str]:
        names = set()
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix), Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                names.add(cp["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)

    def model_dir(self, version: str) -> Path:
        """Download the model into the cache (once) and return the local folder."""
        local = self.cache / "models" / version
        if (local / "metadata.json").is_file():
            return local
        keys = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(f"models/{version}/")) for o in page.get("Contents", [])]
        if not keys:
            return local  # absent: the loader raises a clear "does not exist"
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache, prefix=".dl-"))
        for k in keys:
            self.s3.download_file(self.bucket, k, str(tmp / k.rsplit("/", 1)[-1]))
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.exists():
            shutil.rmtree(local)
        os.replace(tmp, local)
        return local

    def add_model(self, version: str, src: Path) -> Path:
        # metadata.json last: its presence marks a complete model for readers (has_model)
        files = sorted(src.iterdir(), key=lambda p: p.name == "metadata.json")
        for f in files:
            self._upload(f"models/{version}/{f.name}", f)
        local = self.cache / "models" / version
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.exists():
            shutil.rmtree(src, ignore_errors=True)
        else:
            os.replace(src, local)
        return local

    def put_run_file(self, run_date: dt.date | str, path: Path) -> None:
        self._upload(f"runs/{run_date}/{path.name}", path)

    def run_file(self, run_date: dt.date | str, name: str) -> Path | None:
        local = self.run_dir(run_date) / name
        data = self._read(f"runs/{run_date}/{name}")
        if data is None:
            return local if local.exists() else None
        tmp = local.with_name(f".{name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return local


def open_store(root: str | os.PathLike | None = None) -> ArtifactStore:
    """``root`` or ``$SEGMENT_ARTIFACTS`` or ``<SEGMENT_DATA_DIR or .data>/artifacts``;
    ``s3://bucket/prefix`` selects the S3 store."""
    root = root or os.environ.get("SEGMENT_ARTIFACTS") or Path(os.environ.get("SEGMENT_DATA_DIR") or ".data") / "artifacts"
    if str(root).startswith("s3://"):
        return S3ArtifactStore(str(root))
    return LocalArtifactStore(root)
