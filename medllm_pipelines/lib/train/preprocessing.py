"""Tabular preprocessing fitted on the training split only.

The same fitted object transforms validation, test and serving rows, so that
no statistic (median, mean, scale, category list) ever leaks from data the
model is judged on. The missing-value policy is declared data, reported with
the number of values it filled in the training split, because a reviewer has
to know how much of the model's input was invented (T/HBSEA 013-2024 5.2.1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

PREPROCESSOR_FILENAME = "preprocessor.joblib"
PREPROCESSOR_CONFIG_FILENAME = "preprocessor.json"
PREPROCESSOR_FORMAT_VERSION = 1
CATEGORICAL_MISSING_TOKEN = "__missing__"

NUMERIC_POLICY = "median of the training split, then standardised with the training mean and standard deviation"
CATEGORICAL_POLICY = (
    f"missing values become the category {CATEGORICAL_MISSING_TOKEN!r}; one-hot encoded with the "
    "training categories; a category unseen in training encodes as all zeros"
)


@dataclass(frozen=True)
class PreprocessingConfig:
    """Which columns are numeric or categorical and what is done to each.

    Stored next to the model so that a reader can rebuild the pipeline from
    its description without unpickling anything.
    """

    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    numeric_imputation: str = "median"
    numeric_scaling: str = "standard"
    categorical_encoding: str = "onehot"
    categorical_missing_token: str = CATEGORICAL_MISSING_TOKEN
    handle_unknown: str = "ignore"

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.numeric_columns + self.categorical_columns

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["numeric_columns"] = list(self.numeric_columns)
        data["categorical_columns"] = list(self.categorical_columns)
        return data


@dataclass(frozen=True)
class MissingValueReport:
    """How many values the declared policy imputed, per column, in the train split."""

    n_rows: int
    imputed_per_column: dict[str, int]
    numeric_policy: str = NUMERIC_POLICY
    categorical_policy: str = CATEGORICAL_POLICY

    @property
    def total_imputed(self) -> int:
        return int(sum(self.imputed_per_column.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "imputed_per_column": dict(self.imputed_per_column),
            "total_imputed": self.total_imputed,
            "numeric_policy": self.numeric_policy,
            "categorical_policy": self.categorical_policy,
        }


@dataclass
class FittedPreprocessor:
    """A ColumnTransformer fitted on train rows, with its config and missing-value report."""

    transformer: ColumnTransformer
    config: PreprocessingConfig
    missing_values: MissingValueReport
    feature_names_out: list[str] = field(default_factory=list)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Apply the train-fitted statistics unchanged; extra columns are ignored."""
        selected = select_input_columns(frame, self.config)
        return np.asarray(self.transformer.transform(selected), dtype=np.float32)

    @property
    def n_features_out(self) -> int:
        return len(self.feature_names_out)

    def fitted_statistics(self) -> dict[str, dict[str, float] | dict[str, list[str]]]:
        """Learned medians, means, scales and categories: what a leakage audit compares."""
        numeric = self.transformer.named_transformers_.get("numeric")
        stats: dict[str, Any] = {"median": {}, "mean": {}, "scale": {}, "categories": {}}
        if numeric is not None and self.config.numeric_columns:
            imputer: SimpleImputer = numeric.named_steps["impute"]
            scaler: StandardScaler = numeric.named_steps["scale"]
            for index, column in enumerate(self.config.numeric_columns):
                stats["median"][column] = float(imputer.statistics_[index])
                stats["mean"][column] = float(scaler.mean_[index])
                stats["scale"][column] = float(scaler.scale_[index])
        categorical = self.transformer.named_transformers_.get("categorical")
        if categorical is not None and self.config.categorical_columns:
            encoder: OneHotEncoder = categorical.named_steps["encode"]
            for column, categories in zip(self.config.categorical_columns, encoder.categories_, strict=True):
                stats["categories"][column] = [str(value) for value in categories]
        return stats


def build_preprocessor(numeric_columns: Sequence[str], categorical_columns: Sequence[str]) -> ColumnTransformer:
    """An unfitted ColumnTransformer; shared by the network and the logistic baseline.

    Both models must see identical inputs for the baseline comparison (V5) to
    say anything about the model rather than about the preprocessing.
    """
    numeric_pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
    )
    categorical_pipeline = Pipeline(
        [
            (
                "impute",
                SimpleImputer(strategy="constant", fill_value=CATEGORICAL_MISSING_TOKEN, keep_empty_features=True),
            ),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)),
        ]
    )
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric_columns:
        transformers.append(("numeric", numeric_pipeline, list(numeric_columns)))
    if categorical_columns:
        transformers.append(("categorical", categorical_pipeline, list(categorical_columns)))
    if not transformers:
        raise ValueError("no feature columns given")
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0, verbose_feature_names_out=True)


def split_feature_columns(
    feature_columns: Sequence[str], categorical_columns: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Numeric = feature columns that are not categorical; categoricals may or may not be repeated in features.

    Raises on duplicates so that a column is never encoded twice.
    """
    if len(set(feature_columns)) != len(list(feature_columns)):
        raise ValueError(f"duplicate feature columns: {list(feature_columns)}")
    if len(set(categorical_columns)) != len(list(categorical_columns)):
        raise ValueError(f"duplicate categorical columns: {list(categorical_columns)}")
    # str(): numpy string scalars (e.g. from scikit-learn's datasets) are rejected by ColumnTransformer.
    categorical = tuple(str(column) for column in categorical_columns)
    numeric = tuple(str(column) for column in feature_columns if str(column) not in set(categorical))
    return numeric, categorical


def select_input_columns(frame: pd.DataFrame, config: PreprocessingConfig) -> pd.DataFrame:
    """The declared input columns with categoricals as strings; missing columns fail loudly."""
    missing = [column for column in config.input_columns if column not in frame.columns]
    if missing:
        raise KeyError(f"input frame lacks feature columns: {missing}")
    selected = frame.loc[:, list(config.input_columns)].copy()
    for column in config.numeric_columns:
        selected[column] = pd.to_numeric(selected[column], errors="raise").astype("float64")
    for column in config.categorical_columns:
        # Mixed str/None object columns trip the encoder's sorting; NaN is the one missing marker.
        selected[column] = selected[column].astype(object).map(lambda value: np.nan if pd.isna(value) else str(value))
    return selected


def fit_preprocessor(
    train_frame: pd.DataFrame, numeric_columns: Sequence[str], categorical_columns: Sequence[str]
) -> FittedPreprocessor:
    """Fit on the rows given, which must be the training split and nothing else."""
    if len(train_frame) == 0:
        raise ValueError("cannot fit preprocessing on an empty training split")
    config = PreprocessingConfig(tuple(map(str, numeric_columns)), tuple(map(str, categorical_columns)))
    selected = select_input_columns(train_frame, config)
    all_missing = [column for column in config.numeric_columns if selected[column].isna().all()]
    if all_missing:
        raise ValueError(f"numeric columns entirely missing in the training split, no median exists: {all_missing}")
    imputed = {column: int(selected[column].isna().sum()) for column in config.input_columns}
    transformer = build_preprocessor(config.numeric_columns, config.categorical_columns)
    transformer.fit(selected)
    return FittedPreprocessor(
        transformer=transformer,
        config=config,
        missing_values=MissingValueReport(n_rows=len(selected), imputed_per_column=imputed),
        feature_names_out=[str(name) for name in transformer.get_feature_names_out()],
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_preprocessor(fitted: FittedPreprocessor, directory: str | Path) -> Path:
    """Write the fitted transformer (joblib) and a readable JSON config beside it.

    The JSON carries the file's SHA-256, checked on load, because a joblib
    file is a pickle and must only be loaded when it is the one we wrote.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PREPROCESSOR_FILENAME
    joblib.dump(fitted.transformer, path)
    description = {
        "format_version": PREPROCESSOR_FORMAT_VERSION,
        "config": fitted.config.to_dict(),
        "missing_values": fitted.missing_values.to_dict(),
        "feature_names_out": fitted.feature_names_out,
        "fitted_statistics": fitted.fitted_statistics(),
        "scikit_learn_version": sklearn.__version__,
        "sha256": _sha256(path),
    }
    (directory / PREPROCESSOR_CONFIG_FILENAME).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return path


def load_preprocessor(directory: str | Path) -> FittedPreprocessor:
    """Load what `save_preprocessor` wrote, refusing a transformer whose bytes changed."""
    directory = Path(directory)
    path = directory / PREPROCESSOR_FILENAME
    description = json.loads((directory / PREPROCESSOR_CONFIG_FILENAME).read_text())
    if _sha256(path) != description["sha256"]:
        raise ValueError(f"{path} does not match the SHA-256 recorded when it was saved; refusing to unpickle it")
    config_data = description["config"]
    config = PreprocessingConfig(
        numeric_columns=tuple(config_data.pop("numeric_columns")),
        categorical_columns=tuple(config_data.pop("categorical_columns")),
        **config_data,
    )
    missing = description["missing_values"]
    return FittedPreprocessor(
        transformer=joblib.load(path),
        config=config,
        missing_values=MissingValueReport(
            n_rows=missing["n_rows"],
            imputed_per_column=missing["imputed_per_column"],
            numeric_policy=missing["numeric_policy"],
            categorical_policy=missing["categorical_policy"],
        ),
        feature_names_out=list(description["feature_names_out"]),
    )
