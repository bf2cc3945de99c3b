"""The artifact store: models and per-run files, with a ``production`` pointer.

Layout (the same in a local folder and on S3)::

    <root>/models/<version>/weights.safetensors, metadata.json, reference.json
    <root>/runs/<run_date>/features.parquet, assignments.parquet, validation*.json, profiles.json, ...
    <root>/production.json     {"version": ..., "history": [{"version", "run_date", "promoted_at", "reason"}]}

Everything read back is checked for shape as well as syntax: a ``production.json`` or a model's
``metadata.json`` that is valid JSON of the wrong shape (a list, a missing key, a history entry
without a date) is refused with an error that names the file and what is wrong
(``ArtifactStoreError``; ``ModelArtifactError`` for a model, which is also the model package's
``ArtifactError``, so callers that fall back on an unreadable model fall back on it too).

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

from segmentation.model.artifact import METADATA, ArtifactError

log = logging.getLogger(__name__)

PRODUCTION = "production.json"
_EMPTY_POINTER: dict[str, Any] = {"version": None, "history": []}
_POINTER_SHAPE = '{"version": "<model version>" or null, "history": [{"version": ..., "run_date": "YYYY-MM-DD", ...}]}'
# what ConcreteGMVAE.load reads from metadata.json: key -> expected JSON type
_METADATA_SHAPE: dict[str, type | tuple[type, ...]] = {
    "kind": str, "format_version": int, "config": dict, "preprocessing": dict, "feature_types": dict,
}
_CONFIG_SHAPE: dict[str, type | tuple[type, ...]] = {"n_segments": int, "latent_dim": int, "hidden": list}


class ArtifactStoreError(RuntimeError):
    pass


class ModelArtifactError(ArtifactStoreError, ArtifactError):
    """A stored model whose files cannot be used (missing, corrupt, or of the wrong shape)."""


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _pointer_problem(ptr: Any) -> str | None:
    """What is wrong with a parsed production pointer (None: nothing)."""
    if not isinstance(ptr, dict):
        return f"it holds {_json_type(ptr)}, not an object"
    if "history" not in ptr:
        return "it has no 'history'"
    if not isinstance(ptr["history"], list):
        return f"'history' is {_json_type(ptr['history'])}, not a list"
    if ptr.get("version") is not None and not isinstance(ptr["version"], str):
        return f"'version' is {_json_type(ptr['version'])}, not a model version (text) or null"
    for i, h in enumerate(ptr["history"]):
        if not isinstance(h, dict):
            return f"history[{i}] is {_json_type(h)}, not an object"
        for key in ("version", "run_date"):
            if not isinstance(h.get(key), str) or not h[key]:
                return f"history[{i}] has no {key!r} (text)" if key not in h else \
                    f"history[{i}][{key!r}] is {_json_type(h[key])}, not text"
        try:
            dt.date.fromisoformat(h["run_date"])
        except ValueError:
            return f"history[{i}]['run_date'] {h['run_date']!r} is not a date (YYYY-MM-DD)"
    return None


_RUN_TEXT_FIELDS = ("run_date", "mode", "spec", "lineage_start")


def metadata_problem(meta: Any) -> str | None:
    """What is wrong with a parsed model ``metadata.json`` for loading it (None: nothing)."""
    if not isinstance(meta, dict):
        return f"it holds {_json_type(meta)}, not an object"
    for key, kind in _METADATA_SHAPE.items():
        if key not in meta:
            return f"it has no {key!r}"
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            return f"{key!r} is {_json_type(meta[key])}"
    if meta["kind"] != "ConcreteGMVAE":
        return f"'kind' is {meta['kind']!r}, not 'ConcreteGMVAE'"
    for key, kind in _CONFIG_SHAPE.items():
        if key not in meta["config"]:
            return f"'config' has no {key!r}"
        if not isinstance(meta["config"][key], kind) or isinstance(meta["config"][key], bool):
            return f"config[{key!r}] is {_json_type(meta['config'][key])}"
    if "run" in meta and not isinstance(meta["run"], dict):
        return f"'run' is {_json_type(meta['run'])}, not an object"
    for key in _RUN_TEXT_FIELDS:  # the registry sorts and compares these: one null stops every night
        if key in meta.get("run", {}) and not isinstance(meta["run"][key], str):
            return f"run[{key!r}] is {_json_type(meta['run'][key])}, not text"
    return None


def check_model_dir(path: str | os.PathLike, shown: str | None = None) -> dict[str, Any]:
    """The parsed ``metadata.json`` of a local model folder, or ``ModelArtifactError`` naming the file
    (``shown``: how to name it, e.g. its S3 address) and what is wrong with it (missing, not JSON, or
    JSON of the wrong shape)."""
    path = Path(path) / METADATA
    file = shown or str(path)
    if not path.is_file():
        raise ModelArtifactError(f"{file} is missing: no model is stored there (or it was only partly written)")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{file} is not valid JSON ({exc}); the artifact is corrupt") from exc
    problem = metadata_problem(meta)
    if problem:
        raise ModelArtifactError(f"{file} is not model metadata: {problem}; the artifact is corrupt (retrain, or "
                                 "restore the model folder from backup)")
    return meta


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
    def _location(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _read_pointer(self) -> dict[str, Any]:
        raw = self._read(PRODUCTION)
        if raw is None:
            return dict(_EMPTY_POINTER)
        try:
            ptr = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactStoreError(
                f"{self._location(PRODUCTION)} is corrupt: not valid JSON ({exc}); restore it from backup or delete "
                "it to retrain from scratch"
            ) from exc
        problem = _pointer_problem(ptr)
        if problem:
            raise ArtifactStoreError(
                f"{self._location(PRODUCTION)} is corrupt: {problem} (expected {_POINTER_SHAPE}); restore it from "
                "backup or delete it to retrain from scratch"
            )
        return ptr

    def production(self) -> str | None:
        return self._read_pointer().get("version")

    def production_history(self) -> list[dict[str, Any]]:
        return list(self._read_pointer().get("history", []))

    def production_as_of(self, run_date: dt.date) -> str | None:
        """The model that was in production for a run of ``run_date``: the latest promotion made for
        an earlier date. Reruns and backfills use it, so they repeat what that night did."""
        return _production_as_of(self._read_pointer(), run_date)

    def promote(self, version: str, run_date: dt.date, reason: str = "", *, replace_unreadable: bool = False) -> bool:
        """Make ``version`` the production model for ``run_date`` (and for later dates, unless a later
        date has its own). Returns False when it already was (nothing is written: reruns leave the
        pointer byte for byte as it was). ``replace_unreadable``: when the pointer is corrupt, keep
        its bytes aside as ``production.json.corrupt-<UTC time>`` and start a new history with this
        promotion, instead of raising."""
        if not self.has_model(version):
            raise ArtifactStoreError(f"cannot promote {version}: {self} holds no such model")
        try:
            ptr = self._read_pointer()
        except ArtifactStoreError as exc:
            if not replace_unreadable:
                raise
            aside = f"{PRODUCTION}.corrupt-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}"
            self._write(aside, self._read(PRODUCTION) or b"")
            log.error("artifacts: %s; kept it as %s and started a new production history", exc, self._location(aside))
            ptr = dict(_EMPTY_POINTER)
        new = _pointer_after_promotion(ptr, version, run_date, reason)
        if new["version"] == ptr.get("version") and \
                any(h["run_date"] == str(run_date) and h["version"] == version for h in ptr["history"]):
            return False  # already promoted for this date (a rerun)
        self._write(PRODUCTION, json.dumps(new, indent=2).encode())
        log.info("artifacts: %s promoted for run date %s; production is now %s", version, run_date, new["version"])
        return True

    # ---- models ------------------------------------------------------------------------------
    def has_model(self, version: str) -> bool:
        return self._read(f"models/{version}/metadata.json") is not None

    def models(self) -> list[dict[str, Any]]:
        """Every stored model with the run information saved in its metadata (a model whose
        metadata is unreadable or of the wrong shape is left out, with a warning naming the file)."""
        out = []
        for version in self._list("models/"):
            raw = self._read(f"models/{version}/{METADATA}")
            if raw is None:
                continue
            try:
                meta = json.loads(raw)
                problem = metadata_problem(meta)
            except (ValueError, UnicodeDecodeError) as exc:
                problem = f"not valid JSON ({exc})"
            if problem:
                log.warning("artifacts: %s is not model metadata (%s); model %s ignored",
                            self._location(f"models/{version}/{METADATA}"), problem, version)
                continue
            saved_at = meta.get("saved_at") if isinstance(meta.get("saved_at"), str) else ""
            out.append({"version": version, "saved_at": saved_at, **meta.get("run", {})})
        return out

    def model_metadata(self, version: str) -> dict[str, Any]:
        """The checked ``metadata.json`` of a stored model (``ModelArtifactError`` names the file and
        what is wrong when it is missing, not JSON, or of the wrong shape)."""
        return check_model_dir(self.model_dir(version), self._location(f"models/{version}/{METADATA}"))

    def load_model(self, version: str, device: str = "cpu") -> Any:
        """``ConcreteGMVAE.load`` of a stored model, after checking its metadata's shape: every way a
        stored model can be unusable raises ``ModelArtifactError`` (an ``ArtifactError``) naming the file."""
        from segmentation import ConcreteGMVAE

        path = self.model_dir(version)
        check_model_dir(path, self._location(f"models/{version}/{METADATA}"))
        try:
            return ConcreteGMVAE.load(str(path), device=device)
        except ArtifactError as exc:
            if isinstance(exc, ModelArtifactError):
                raise
            raise ModelArtifactError(f"model {version} ({self._location(f'models/{version}')}): {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ModelArtifactError(
                f"{self._location(f'models/{version}/{METADATA}')} does not describe a loadable model "
                f"({type(exc).__name__}: {exc}); the artifact is corrupt"
            ) from exc

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

    @property
    def url(self) -> str:
        return str(self.root)

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

    @property
    def url(self) -> str:
        """The address with its options (endpoint, encryption; never credentials): what another step
        passes to ``open_store`` to reach the same store the same way."""
        from urllib.parse import urlencode

        opts = {k: v for k, v in (("endpoint_url", self.endpoint_url), ("sse", self.sse),
                                  ("kms_key_id", self.kms_key_id)) if v}
        return f"{self.root}?{urlencode(opts)}" if opts else self.root

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
