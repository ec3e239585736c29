"""Preprocessing that cannot leak (clause 5.1.3.2, row D9): the one implementation.

Declared in the model spec (``preprocessing:``): the declared missing-value
policy (lib/quality/missing_values.yaml, row D5), then median imputation of
what it leaves, min-max or z-score scaling, one-hot encoding, optional
feature selection (univariate F-test, L1/Lasso-penalised logistic
regression, recursive feature elimination) and optional PCA.
``fit_preprocessing`` fits on the rows of the training split only - the
function never sees another split's rows - and the curate stage saves the
fitted pipeline with the dataset version (joblib, its SHA-256, and a JSON
description readable without unpickling). Training, the baseline,
evaluation and serving load that saved pipeline and apply it unchanged;
nothing else fits one.
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
SPEC_IMPUTATION = "spec_imputation"  # what the spec's imputation filled after the declared policy


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
    declared_missing_values: bool = True  # apply lib/quality/missing_values.yaml first (row D5)

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
            declared_missing_values=str(raw.get("missing_values", "declared")) == "declared",
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

    from medllm_pipelines.lib.quality.imputation import DeclaredMissingValues

    numeric_steps: list[tuple[str, Any]] = [("declared", DeclaredMissingValues())] if spec.declared_missing_values else []
    numeric_steps.append(("impute", SimpleImputer(strategy=spec.imputation)))
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
    """The declared input columns; a missing column or a non-numeric value in a numeric one fails loudly."""
    missing = [c for c in (*spec.numeric_columns, *spec.categorical_columns) if c not in frame.columns]
    if missing:
        raise KeyError(f"input frame lacks feature columns: {missing}")
    inputs = frame[list(spec.numeric_columns) + list(spec.categorical_columns)].copy()
    for column in spec.numeric_columns:
        inputs[column] = pd.to_numeric(inputs[column], errors="raise").astype(float)
    for column in spec.categorical_columns:
        inputs[column] = inputs[column].astype(object).where(inputs[column].notna(), None)
    return inputs


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


@dataclass
class FittedPreprocessing:
    """The fitted pipeline, its declaration and what it did to the training rows."""

    pipeline: Any
    spec: PreprocessingSpec
    fitted_rows: int
    fitted_ids_sha256: str
    output_features: list[str]
    missing_values: dict[str, Any]
    dataset_version: str | None = None

    @property
    def input_columns(self) -> list[str]:
        return [*self.spec.numeric_columns, *self.spec.categorical_columns]

    @property
    def n_features_out(self) -> int:
        return len(self.output_features)

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Apply the fitted pipeline unchanged (validation, test, serving); extra columns are ignored."""
        return pd.DataFrame(self.transform_array(frame).astype(float), columns=self.output_features, index=frame.index)

    def transform_array(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 model inputs, one row per frame row, columns in ``output_features`` order."""
        if len(frame) == 0:
            return np.empty((0, self.n_features_out), dtype=np.float32)
        return np.asarray(self.pipeline.transform(_inputs(frame, self.spec)), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Every fitted statistic, in plain JSON: what an auditor or a non-Python server needs."""
        steps = dict(self.pipeline.named_steps)
        columns = steps["columns"]
        numeric = columns.named_transformers_["numeric"]
        # a spec without categorical (or numeric) columns: scikit-learn never fits that branch ("drop" when empty)
        categorical = columns.named_transformers_.get("categorical")
        onehot = getattr(categorical, "named_steps", {}).get("onehot") if self.spec.categorical_columns else None
        described: dict[str, Any] = {
            "spec": self.spec.as_dict(),
            "fitted_on": {"split": "train", "rows": self.fitted_rows, "ids_sha256": self.fitted_ids_sha256},
            "imputation_values": dict(zip(self.spec.numeric_columns, _floats(numeric.named_steps["impute"].statistics_), strict=True)),
            "categories": {
                column: [str(c) for c in cats]
                for column, cats in zip(self.spec.categorical_columns, onehot.categories_ if onehot is not None else [],
                                        strict=True)
            },
            "output_features": self.output_features,
            "missing_values": self.missing_values,
        }
        if "declared" in numeric.named_steps:
            described["declared_missing_values"] = numeric.named_steps["declared"].describe()
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

    def as_metadata(self, dataset: Any) -> dict[str, Any]:
        """What the curate asset reports: the fit, its inputs and outputs, the output shape per split.

        ``dataset``: the ``lib.curate.dataset.SplitDataset`` it was fitted on.
        """
        selected = self.describe().get("feature_selection", {}).get("selected", self.output_features)
        return {
            "dataset_version": dataset.version,
            "fitted": True,
            "fitted_on_split": "train",
            "fitted_rows": self.fitted_rows,
            "fitted_ids_sha256": self.fitted_ids_sha256,
            "fingerprint": self.fingerprint(),
            "output_features": self.output_features,
            "selected_features": selected,
            "missing_values": self.missing_values,
            "transformed_shape_per_split": {
                s: list(self.transform_array(dataset.split(s)).shape) for s in ("train", "validation", "test")
            },
            "preprocessing": self.spec.as_dict(),
        }

    def fingerprint(self) -> str:
        """Hash of the fitted statistics: refitting on the same rows reproduces it exactly."""
        described = self.describe()
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _floats(values: Any) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 10) for v in np.asarray(values, dtype=float)]


def fit_preprocessing(
    frame: pd.DataFrame,
    spec: PreprocessingSpec,
    *,
    split_column: str = "split",
    label: str = "label",
    id_column: str = "patient_pseudonym",
    dataset_version: str | None = None,
) -> FittedPreprocessing:
    """Fit on the training split's rows only; nothing about the other splits reaches the pipeline."""
    train = frame[frame[split_column] == "train"]
    if train.empty:
        raise ValueError("no training rows to fit preprocessing on")
    inputs = _inputs(train, spec)
    empty = [c for c in spec.numeric_columns if inputs[c].isna().all()]
    if empty:
        raise ValueError(f"numeric columns entirely missing in the training split, nothing to impute from: {empty}")
    pipeline = build_pipeline(spec)
    pipeline.fit(inputs, train[label].to_numpy())
    return FittedPreprocessing(
        pipeline=pipeline,
        spec=spec,
        fitted_rows=len(train),
        fitted_ids_sha256=ids_digest(train[id_column].astype(str).tolist()),
        output_features=[str(n) for n in pipeline.get_feature_names_out()],
        missing_values=_missing_value_report(pipeline, inputs, spec),
        dataset_version=dataset_version,
    )


def _missing_value_report(pipeline: Any, inputs: pd.DataFrame, spec: PreprocessingSpec) -> dict[str, Any]:
    """What the fitted steps filled in the training rows, per column and method: the one imputation report."""
    numeric = pipeline.named_steps["columns"].named_transformers_["numeric"]
    frame = inputs[list(spec.numeric_columns)]
    methods: dict[str, dict[str, int]] = {}
    declared = numeric.named_steps.get("declared")
    if declared is not None:
        frame, methods = declared.transform_counted(frame)
    for column in spec.numeric_columns:
        left = int(frame[column].isna().sum())
        if left:
            methods.setdefault(column, {})[f"{SPEC_IMPUTATION}_{spec.imputation}"] = left
    for column in spec.categorical_columns:
        n = int(inputs[column].isna().sum())
        if n:
            methods.setdefault(column, {})["missing_category"] = n
    imputed = {c: int(sum(m.values())) for c, m in sorted(methods.items())}
    return {
        "fitted_on_split": "train",
        "n_rows": len(inputs),
        "missing_value_policy_version": declared.policy_version_ if declared is not None else None,
        "imputed_per_column": imputed,
        "method_per_column": {c: dict(sorted(m.items())) for c, m in sorted(methods.items())},
        "total_imputed": int(sum(imputed.values())),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_preprocessing(fitted: FittedPreprocessing, folder: Path) -> dict[str, str]:
    """The fitted pipeline (joblib) and its JSON description with the pipeline file's SHA-256."""
    import joblib

    from medllm_pipelines.lib.common.files import write_private_atomic

    folder.mkdir(parents=True, exist_ok=True)
    pipeline_path = folder / PIPELINE_FILE
    joblib.dump(fitted.pipeline, pipeline_path)
    description = {
        **fitted.describe(),
        "fingerprint": fitted.fingerprint(),
        "dataset_version": fitted.dataset_version,
        "sha256": _sha256(pipeline_path),
    }
    description_path = folder / DESCRIPTION_FILE
    write_private_atomic(description_path, json.dumps(description, indent=2, sort_keys=True) + "\n")
    return {"pipeline": str(pipeline_path), "description": str(description_path)}


def load_preprocessing(folder: Path) -> FittedPreprocessing:
    """What ``save_preprocessing`` wrote; a pipeline file whose bytes changed is refused before unpickling."""
    import joblib

    folder = Path(folder)
    description = json.loads((folder / DESCRIPTION_FILE).read_text())
    pipeline_path = folder / PIPELINE_FILE
    if _sha256(pipeline_path) != description.get("sha256"):
        raise ValueError(f"{pipeline_path} does not match the SHA-256 recorded when it was saved; refusing to unpickle it")
    raw = dict(description["spec"])
    spec = PreprocessingSpec(
        **{**raw, "numeric_columns": tuple(raw["numeric_columns"]), "categorical_columns": tuple(raw["categorical_columns"])}
    )
    return FittedPreprocessing(
        pipeline=joblib.load(pipeline_path),
        spec=spec,
        fitted_rows=int(description["fitted_on"]["rows"]),
        fitted_ids_sha256=str(description["fitted_on"]["ids_sha256"]),
        output_features=list(description["output_features"]),
        missing_values=dict(description.get("missing_values") or {}),
        dataset_version=description.get("dataset_version"),
    )
