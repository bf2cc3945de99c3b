"""Mixed-type table -> tensors, fitted once and shipped inside the model artifact.

Each declared feature type gets its own encoding for the encoder input and its own target for the
matching likelihood head:

- ``continuous``: standardised (Gaussian head).
- ``money``: signed log1p, then standardised (Gaussian head on the transformed scale); money is
  heavy-tailed and a raw Gaussian would be dominated by a few whales.
- ``count``: raw non-negative integers as the target of a negative-binomial head; log1p and
  standardised for the encoder input.
- ``binary``: 0/1 (Bernoulli head).
- ``categorical``: integer codes (softmax head). Levels rarer than ``min_level_count`` pool into
  ``__other__``; a level never seen in training maps to ``__unknown__`` at scoring time.

Missing values are never filled in silently: they are masked out of the likelihood, the encoder sees
a missing-indicator column for every feature that had missing values in the training table, and the
value slot itself holds 0 (the training mean after standardisation) only as an input placeholder.
Like scikit-learn's ``MissingIndicator(features="missing-only")``, a feature complete at fit time gets
no indicator: on a wide table of complete features (784 MNIST pixels) the indicators would be a
quarter of the network's work and always zero. If such a feature turns up with missing values at
scoring time, the rows are still masked out of the likelihood and a warning names the column.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from segmentation.spec import FEATURE_TYPES

log = logging.getLogger(__name__)

OTHER = "__other__"
UNKNOWN = "__unknown__"
HEAD_ORDER = ("gaussian", "count", "binary", "categorical")
_GAUSSIAN_TYPES = ("continuous", "money")
_CLIP = 8.0  # standardised inputs are clipped to +-8 sd: one absurd outlier must not blow up a step


class DataError(ValueError):
    """Input data that cannot be used: the message names the column and the problem."""


def _as_frame(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    try:
        import pyarrow as pa

        if isinstance(data, pa.Table):
            return data.to_pandas()
    except ImportError:  # pragma: no cover
        pass
    raise DataError(f"expected a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")


def _numeric(col: pd.Series, name: str, table: str) -> np.ndarray:
    """Column -> float64 array with NaN for missing; text that is not a number is an error."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype("float64").to_numpy(copy=True)
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_numeric(col, errors="coerce").astype("float64").to_numpy(copy=True, na_value=np.nan)
    converted = pd.to_numeric(col, errors="coerce")
    bad = col[converted.isna() & col.notna()]
    if len(bad):
        examples = ", ".join(repr(v) for v in bad.astype(str).unique()[:3])
        raise DataError(
            f"{table}: column {name!r} is declared numeric but holds text that is not a number "
            f"({len(bad)} rows, e.g. {examples}); clean it upstream or declare it categorical"
        )
    return converted.astype("float64").to_numpy(copy=True, na_value=np.nan)


def infer_feature_types(df: pd.DataFrame) -> dict[str, str]:
    """Guess a feature type per column from its dtype (used when the caller declares none).

    Columns that look like identifiers (text or integers unique on every row) are skipped.
    """
    types: dict[str, str] = {}
    n = len(df)
    for name in df.columns:
        col = df[name]
        nonnull = col.dropna()
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)) and len(nonnull):
            as_number = pd.to_numeric(nonnull, errors="coerce")
            share = float(as_number.notna().mean())
            if 0.9 <= share < 1.0:  # a numeric column with a typo: never silently drop or recode it
                bad = nonnull[as_number.isna()].astype(str).unique()[:3].tolist()
                raise DataError(
                    f"column {name!r} holds numbers and some text that is not a number (e.g. {bad}); clean it "
                    "upstream or declare its type explicitly"
                )
        if n > 1 and nonnull.nunique() == n and not pd.api.types.is_float_dtype(col):
            log.info("inferred: %r looks like an identifier (unique on every row); not used as a feature", name)
            continue
        if pd.api.types.is_bool_dtype(col):
            t = "binary"
        elif pd.api.types.is_integer_dtype(col) or (
            pd.api.types.is_float_dtype(col) and len(nonnull) and np.all(np.mod(nonnull, 1) == 0) and nonnull.min() >= 0
            and nonnull.nunique() > 2
        ):
            uniq = set(pd.unique(nonnull))
            if uniq <= {0, 1}:
                t = "binary"
            elif len(nonnull) and nonnull.min() >= 0:
                t = "count"
            else:
                t = "continuous"
        elif pd.api.types.is_float_dtype(col):
            uniq = set(pd.unique(nonnull))
            t = "binary" if uniq and uniq <= {0.0, 1.0} else "continuous"
        else:
            t = "categorical"
        types[name] = t
    return types


@dataclass
class Layout:
    """Where each feature lives in the tensors: sizes of every head and of the encoder input."""

    n_gaussian: int
    n_count: int
    n_binary: int
    cat_sizes: list[int]
    input_dim: int


class TablePreprocessor:
    """Fits per-feature transforms on a training table; turns any table into model tensors."""

    def __init__(self, feature_types: dict[str, str], min_level_count: int = 10, table_name: str = "input"):
        unknown = {k: v for k, v in feature_types.items() if v not in FEATURE_TYPES}
        if unknown:
            name, t = next(iter(unknown.items()))
            raise DataError(
                f"{table_name}: column {name!r} has unknown feature type {t!r}; use one of {', '.join(FEATURE_TYPES)}"
            )
        if not feature_types:
            raise DataError(f"{table_name}: no features declared")
        self.feature_types = dict(feature_types)
        self.min_level_count = int(min_level_count)
        self.table_name = table_name
        self.params: dict[str, dict[str, Any]] = {}

    # ---- grouping -------------------------------------------------------------------------
    def _names(self, kinds: tuple[str, ...]) -> list[str]:
        return [n for n, t in self.feature_types.items() if t in kinds]

    @property
    def gaussian_features(self) -> list[str]:
        return self._names(_GAUSSIAN_TYPES)

    @property
    def count_features(self) -> list[str]:
        return self._names(("count",))

    @property
    def binary_features(self) -> list[str]:
        return self._names(("binary",))

    @property
    def categorical_features(self) -> list[str]:
        return self._names(("categorical",))

    @property
    def indicator_features(self) -> list[str]:
        """Features with a missing-indicator input: those with missing values at fit time (artifacts
        written before this rule carry no flag and had an indicator for every feature)."""
        return [n for n in self.feature_types if self.params[n].get("missing_indicator", True)]

    @property
    def layout(self) -> Layout:
        cat_sizes = [len(self.params[n]["levels"]) for n in self.categorical_features]
        n_feat = len(self.indicator_features)
        dense = len(self.gaussian_features) + len(self.count_features) + len(self.binary_features)
        return Layout(
            n_gaussian=len(self.gaussian_features),
            n_count=len(self.count_features),
            n_binary=len(self.binary_features),
            cat_sizes=cat_sizes,
            input_dim=dense + sum(cat_sizes) + n_feat,
        )

    # ---- checks ---------------------------------------------------------------------------
    def _check_columns(self, df: pd.DataFrame, fitting: bool) -> None:
        if len(df) == 0:
            raise DataError(f"{self.table_name}: the table has no rows; nothing to {'fit' if fitting else 'score'}")
        missing = [n for n in self.feature_types if n not in df.columns]
        if missing:
            raise DataError(
                f"{self.table_name}: missing feature column(s) {missing}; present columns: {list(df.columns)[:20]}"
            )
        if fitting:
            for n in self.feature_types:
                if df[n].isna().all():
                    raise DataError(
                        f"{self.table_name}: column {n!r} is null on all {len(df)} rows; "
                        "fix the upstream data or remove the feature from the spec"
                    )

    def _gauss_raw(self, df: pd.DataFrame, name: str) -> np.ndarray:
        v = _numeric(df[name], name, self.table_name)
        if not np.all(np.isfinite(v[~np.isnan(v)])):
            raise DataError(f"{self.table_name}: column {name!r} contains inf; replace it upstream")
        if self.feature_types[name] == "money":
            v = np.sign(v) * np.log1p(np.abs(v))
        return v

    def _count_raw(self, df: pd.DataFrame, name: str) -> np.ndarray:
        v = _numeric(df[name], name, self.table_name)
        obs = v[~np.isnan(v)]
        if len(obs) and (not np.all(np.isfinite(obs)) or obs.min() < 0 or np.any(np.abs(obs - np.round(obs)) > 1e-6)):
            bad = obs[(~np.isfinite(obs)) | (obs < 0) | (np.abs(obs - np.round(np.nan_to_num(obs))) > 1e-6)]
            raise DataError(
                f"{self.table_name}: column {name!r} is declared count but has non-integer or negative values "
                f"(e.g. {bad[:3].tolist()}); declare it continuous or fix it upstream"
            )
        return np.round(v)

    def _binary_raw(self, df: pd.DataFrame, name: str) -> np.ndarray:
        col = df[name]
        if not (pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col)):
            mapping = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "1": 1.0, "0": 0.0, "y": 1.0, "n": 0.0}
            lowered = col.astype("string").str.strip().str.lower()
            v = lowered.map(mapping)
            bad = col[v.isna() & col.notna()]
            if len(bad):
                raise DataError(
                    f"{self.table_name}: column {name!r} is declared binary but holds {bad.astype(str).unique()[:3].tolist()}; "
                    "use 0/1, true/false or yes/no"
                )
            return v.astype("float64").to_numpy(copy=True, na_value=np.nan)
        v = _numeric(col, name, self.table_name)
        obs = v[~np.isnan(v)]
        if len(obs) and not np.all(np.isin(obs, [0.0, 1.0])):
            raise DataError(
                f"{self.table_name}: column {name!r} is declared binary but has values other than 0/1 "
                f"(e.g. {np.unique(obs[~np.isin(obs, [0.0, 1.0])])[:3].tolist()})"
            )
        return v

    @staticmethod
    def _cat_raw(df: pd.DataFrame, name: str) -> pd.Series:
        col = df[name]
        if pd.api.types.is_float_dtype(col):
            # an integer code read as float (a CSV with one empty cell) must still say "1", not "1.0"
            whole = col.notna() & (np.mod(col.fillna(0), 1) == 0)
            out = col.astype("string")
            out[whole] = col[whole].astype("int64").astype("string")
        else:
            out = col.astype("string")
        return out.where(col.notna(), other=pd.NA)

    # ---- fit / transform ------------------------------------------------------------------
    def fit(self, data: Any) -> "TablePreprocessor":
        df = _as_frame(data)
        self._check_columns(df, fitting=True)
        params: dict[str, dict[str, Any]] = {}
        for n in self.gaussian_features:
            v = self._gauss_raw(df, n)
            obs = v[~np.isnan(v)]
            sd = float(obs.std()) if len(obs) > 1 else 1.0
            params[n] = {"mean": float(obs.mean()), "std": sd if sd > 1e-8 else 1.0}
        for n in self.count_features:
            v = self._count_raw(df, n)
            lv = np.log1p(v[~np.isnan(v)])
            sd = float(lv.std()) if len(lv) > 1 else 1.0
            params[n] = {"log_mean": float(lv.mean()), "log_std": sd if sd > 1e-8 else 1.0,
                         "mean": float(np.expm1(lv).mean())}
        for n in self.binary_features:
            v = self._binary_raw(df, n)
            params[n] = {"rate": float(np.nanmean(v))}
        for n in self.categorical_features:
            s = self._cat_raw(df, n).dropna()
            counts = s.value_counts()
            # most frequent first; ties by name so the code order is deterministic
            counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
            keep = [str(k) for k, c in counts.items() if c >= self.min_level_count]
            pooled = int(counts[counts < self.min_level_count].sum())
            levels = keep + [OTHER, UNKNOWN]
            if pooled:
                log.info("%s: %r: %d rare level(s) pooled into %s (%d rows)", self.table_name, n,
                         int((counts < self.min_level_count).sum()), OTHER, pooled)
            params[n] = {"levels": levels, "pooled": sorted(str(k) for k, c in counts.items() if c < self.min_level_count)}
        for n in self.feature_types:
            params[n]["missing_indicator"] = bool(df[n].isna().any())
        self.params = params
        return self

    def transform(self, data: Any) -> dict[str, torch.Tensor]:
        """Table -> dict of tensors: ``x`` (encoder input) and per-head targets and masks."""
        if not self.params:
            raise RuntimeError("TablePreprocessor.transform called before fit")
        df = _as_frame(data)
        self._check_columns(df, fitting=False)
        n = len(df)
        inputs: list[np.ndarray] = []
        miss_cols: dict[str, np.ndarray] = {}
        out: dict[str, torch.Tensor] = {}

        g = np.zeros((n, len(self.gaussian_features)), dtype=np.float32)
        gm = np.zeros_like(g)
        for j, name in enumerate(self.gaussian_features):
            p = self.params[name]
            v = (self._gauss_raw(df, name) - p["mean"]) / p["std"]
            obs = ~np.isnan(v)
            g[obs, j] = np.clip(v[obs], -_CLIP, _CLIP)
            gm[:, j] = obs
            miss_cols[name] = ~obs
        out["gaussian"], out["gaussian_mask"] = torch.from_numpy(g), torch.from_numpy(gm)
        inputs.append(g)

        c = np.zeros((n, len(self.count_features)), dtype=np.float32)
        cin = np.zeros_like(c)
        cm = np.zeros_like(c)
        for j, name in enumerate(self.count_features):
            p = self.params[name]
            v = self._count_raw(df, name)
            obs = ~np.isnan(v)
            c[obs, j] = v[obs]
            cin[obs, j] = np.clip((np.log1p(v[obs]) - p["log_mean"]) / p["log_std"], -_CLIP, _CLIP)
            cm[:, j] = obs
            miss_cols[name] = ~obs
        out["count"], out["count_mask"] = torch.from_numpy(c), torch.from_numpy(cm)
        inputs.append(cin)

        b = np.zeros((n, len(self.binary_features)), dtype=np.float32)
        bm = np.zeros_like(b)
        for j, name in enumerate(self.binary_features):
            v = self._binary_raw(df, name)
            obs = ~np.isnan(v)
            b[obs, j] = v[obs]
            bm[:, j] = obs
            miss_cols[name] = ~obs
        out["binary"], out["binary_mask"] = torch.from_numpy(b), torch.from_numpy(bm)
        inputs.append(b)

        codes = np.zeros((n, len(self.categorical_features)), dtype=np.int64)
        catm = np.zeros((n, len(self.categorical_features)), dtype=np.float32)
        for j, name in enumerate(self.categorical_features):
            levels = self.params[name]["levels"]
            index = {lv: i for i, lv in enumerate(levels)}
            index.update({lv: index[OTHER] for lv in self.params[name].get("pooled", [])})
            s = self._cat_raw(df, name)
            obs = s.notna().to_numpy()
            # levels seen in training keep their code; pooled rare levels and new ones differ:
            # a level counted at fit time but pooled -> __other__, never seen -> __unknown__
            vals = s[obs].astype(str)
            mapped = vals.map(index)
            unseen = mapped.isna()
            if unseen.any():
                n_unseen = int(unseen.sum())
                log.info("%s: %r: %d value(s) not among the training levels -> %s", self.table_name, name,
                         n_unseen, UNKNOWN)
            codes[obs, j] = mapped.fillna(index[UNKNOWN]).astype("int64").to_numpy()
            catm[:, j] = obs
            onehot = np.zeros((n, len(levels)), dtype=np.float32)
            onehot[np.arange(n)[obs], codes[obs, j]] = 1.0
            inputs.append(onehot)
            miss_cols[name] = ~obs
        out["categorical"], out["categorical_mask"] = torch.from_numpy(codes), torch.from_numpy(catm)

        with_indicator = self.indicator_features
        warned = self.__dict__.setdefault("_warned_missing", set())
        for nm in self.feature_types:
            if nm not in with_indicator and nm not in warned and miss_cols[nm].any():
                warned.add(nm)  # once per column and model: scoring calls transform batch by batch
                log.warning("%s: column %r had no missing values in the training table but %d of %d rows are "
                            "missing now; they are left out of its likelihood and the encoder sees the training "
                            "mean (retrain to give the model a missing-value indicator for it)",
                            self.table_name, nm, int(miss_cols[nm].sum()), n)
        if with_indicator:
            inputs.append(np.stack([miss_cols[nm] for nm in with_indicator], axis=1).astype(np.float32))
        out["x"] = torch.from_numpy(np.concatenate(inputs, axis=1))
        return out

    # ---- serialisation (JSON only; loading never unpickles) --------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_types": self.feature_types,
            "min_level_count": self.min_level_count,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TablePreprocessor":
        pre = cls(dict(d["feature_types"]), int(d["min_level_count"]))
        pre.params = {k: dict(v) for k, v in d["params"].items()}
        return pre
