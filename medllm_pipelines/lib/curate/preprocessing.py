"""Preprocessing that cannot leak (clause 5.1.3.2, row D9).

Declared in the model spec (``preprocessing:``): median imputation, min-max
or z-score scaling, one-hot encoding, optional feature selection (univariate
F-test, L1/Lasso-penalised logistic regression, recursive feature
elimination) and optional PCA. ``fit_preprocessing`` fits on the rows of the
training split only - the function never sees another split's rows - and
the fitted pipeline is saved with the dataset version (joblib, plus a JSON
description readable without unpickling) and applied unchanged to
validation, test and serving rows by ``transform``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCALINGS = ("zscore", "minmax", "none")
SELECTIONS = ("univariate", "lasso", "rfe")
PIPELINE_FILE = "preprocessing.joblib"
DESCRIPTION_FILE = "preprocessing.json"
MISSING_CATEGORY = "__missing__"


@dataclass(frozen=True)
class PreprocessingSpec:
    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    imputation: str = "median"
    scaling: str = "zscore"
    encoding: str = "onehot"
    selection: str | None = None
    select_k: int | None = None
    lasso_c: float = 0.5
    pca_components: int | float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}")
        if self.selection is not None and self.selection not in SELECTIONS:
            raise ValueError(f"feature selection must be one of {SELECTIONS}")
        if self.selection in ("univariate", "rfe") and not self.select_k:
            raise ValueError(f"{self.selection} feature selection needs select_k")
        if self.encoding != "onehot":
            raise ValueError("categorical encoding must be onehot")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], numeric: Sequence[str], categorical: Sequence[str]) -> PreprocessingSpec:
        selection = raw.get("feature_selection") or {}
        pca = raw.get("pca") or {}
        return cls(
            numeric_columns=tuple(numeric),
            categorical_columns=tuple(categorical),
            imputation=str(raw.get("imputation", "median")),
            scaling=str(raw.get("scaling", "zscore")),
            encoding=str(raw.get("encoding", "onehot")),
            selection=selection.get("method"),
            select_k=selection.get("k"),
            lasso_c=float(selection.get("C", 0.5)),
            pca_components=pca.get("components"),
            seed=int(raw.get("seed", 0)),
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["numeric_columns"] = list(self.numeric_columns)
        data["categorical_columns"] = list(self.categorical_columns)
        return data


def build_pipeline(spec: PreprocessingSpec) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.feature_selection import RFE, SelectFromModel, SelectKBest, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=spec.imputation))]
    if spec.scaling == "zscore":
        numeric_steps.append(("scale", StandardScaler()))
    elif spec.scaling == "minmax":
        numeric_steps.append(("scale", MinMaxScaler()))
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    columns = ColumnTransformer(
        [("numeric", Pipeline(numeric_steps), list(spec.numeric_columns)), ("categorical", categorical, list(spec.categorical_columns))],
        verbose_feature_names_out=False,
    )
    steps: list[tuple[str, Any]] = [("columns", columns)]
    if spec.selection == "univariate":
        steps.append(("select", SelectKBest(f_classif, k=int(spec.select_k or 1))))
    elif spec.selection == "lasso":
        lasso = LogisticRegression(l1_ratio=1.0, C=spec.lasso_c, solver="liblinear", random_state=spec.seed)
        steps.append(("select", SelectFromModel(lasso)))
    elif spec.selection == "rfe":
        steps.append(("select", RFE(LogisticRegression(max_iter=1000), n_features_to_select=int(spec.select_k or 1))))
    if spec.pca_components:
        steps.append(("pca", PCA(n_components=spec.pca_components, random_state=spec.seed)))
    return Pipeline(steps).set_output(transform="pandas")


def _inputs(frame: pd.DataFrame, spec: PreprocessingSpec) -> pd.DataFrame:
    inputs = frame[list(spec.numeric_columns) + list(spec.categorical_columns)].copy()
    for column in spec.numeric_columns:
        inputs[column] = pd.to_numeric(inputs[column], errors="coerce").astype(float)
    for column in spec.categorical_columns:
        inputs[column] = inputs[column].astype(object).where(inputs[column].notna(), None)
    return inputs


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


@dataclass
class FittedPreprocessing:
    pipeline: Any
    spec: PreprocessingSpec
    fitted_rows: int
    fitted_ids_sha256: str
    output_features: list[str]

    def describe(self) -> dict[str, Any]:
        """Every fitted statistic, in plain JSON: what an auditor or a non-Python server needs."""
        steps = dict(self.pipeline.named_steps)
        columns = steps["columns"]
        numeric = columns.named_transformers_["numeric"]
        categorical = columns.named_transformers_["categorical"]
        described: dict[str, Any] = {
            "spec": self.spec.as_dict(),
            "fitted_on": {"split": "train", "rows": self.fitted_rows, "ids_sha256": self.fitted_ids_sha256},
            "imputation_values": dict(zip(self.spec.numeric_columns, _floats(numeric.named_steps["impute"].statistics_), strict=True)),
            "categories": {
                column: [str(c) for c in cats]
                for column, cats in zip(self.spec.categorical_columns, categorical.named_steps["onehot"].categories_, strict=True)
            },
            "output_features": self.output_features,
        }
        scaler = numeric.named_steps.get("scale")
        if scaler is not None and self.spec.scaling == "zscore":
            described["zscore"] = {"mean": _floats(scaler.mean_), "scale": _floats(scaler.scale_)}
        elif scaler is not None:
            described["minmax"] = {"min": _floats(scaler.data_min_), "max": _floats(scaler.data_max_)}
        if "select" in steps:
            names = list(columns.get_feature_names_out())
            kept = steps["select"].get_support()
            described["feature_selection"] = {
                "method": self.spec.selection,
                "candidates": names,
                "selected": [n for n, k in zip(names, kept, strict=True) if k],
            }
        if "pca" in steps:
            pca = steps["pca"]
            described["pca"] = {
                "components": int(pca.n_components_),
                "explained_variance_ratio": _floats(pca.explained_variance_ratio_),
            }
        return described

    def fingerprint(self) -> str:
        """Hash of the fitted statistics: refitting on the same rows reproduces it exactly."""
        described = self.describe()
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _floats(values: Any) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 10) for v in np.asarray(values, dtype=float)]


def fit_preprocessing(
    frame: pd.DataFrame, spec: PreprocessingSpec, *, split_column: str = "split", label: str = "label", id_column: str = "patient_pseudonym"
) -> FittedPreprocessing:
    """Fit on the training split's rows only; nothing about the other splits reaches the pipeline."""
    train = frame[frame[split_column] == "train"]
    if train.empty:
        raise ValueError("no training rows to fit preprocessing on")
    pipeline = build_pipeline(spec)
    pipeline.fit(_inputs(train, spec), train[label].to_numpy())
    return FittedPreprocessing(
        pipeline=pipeline,
        spec=spec,
        fitted_rows=len(train),
        fitted_ids_sha256=ids_digest(train[id_column].astype(str).tolist()),
        output_features=[str(n) for n in pipeline.get_feature_names_out()],
    )


def transform(fitted: FittedPreprocessing | Any, frame: pd.DataFrame, spec: PreprocessingSpec | None = None) -> pd.DataFrame:
    """Apply the fitted pipeline unchanged (validation, test, serving)."""
    pipeline = fitted.pipeline if isinstance(fitted, FittedPreprocessing) else fitted
    spec = spec or fitted.spec
    out = pipeline.transform(_inputs(frame, spec))
    return pd.DataFrame(np.asarray(out, dtype=float), columns=[str(c) for c in pipeline.get_feature_names_out()], index=frame.index)


def save_preprocessing(fitted: FittedPreprocessing, folder: Path) -> dict[str, str]:
    """The fitted pipeline (joblib) and its JSON description, in the dataset version's folder."""
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    pipeline_path = folder / PIPELINE_FILE
    joblib.dump(fitted.pipeline, pipeline_path)
    description_path = folder / DESCRIPTION_FILE
    description_path.write_text(json.dumps({**fitted.describe(), "fingerprint": fitted.fingerprint()}, indent=2, sort_keys=True))
    return {"pipeline": str(pipeline_path), "description": str(description_path)}


def load_preprocessing(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The saved pipeline (our own artifact: joblib is trusted here) and its description."""
    import joblib

    return joblib.load(folder / PIPELINE_FILE), json.loads((folder / DESCRIPTION_FILE).read_text())
