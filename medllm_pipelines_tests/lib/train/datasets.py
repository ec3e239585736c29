"""Real clinical data that ships inside scikit-learn, shaped like our per-patient feature table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing, PreprocessingSpec, fit_preprocessing

CATEGORICAL_COLUMNS = ["sex"]
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"


def breast_cancer_frame(seed: int = 0, missing_fraction: float = 0.03) -> tuple[pd.DataFrame, list[str]]:
    """WDBC (569 patients, 30 numeric features) with a fake `sex`, a pseudonym, a 60/20/20 split and some NaNs.

    The label is 1 for malignant, so that the positive class is the disease.
    Returns the frame and the feature columns (numeric + sex).
    """
    data = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(seed)
    numeric_columns = [str(name) for name in data.feature_names]
    frame = data.data.copy()
    frame.columns = numeric_columns
    mask = rng.random(frame.shape) < missing_fraction
    frame = frame.mask(mask)
    frame[LABEL_COLUMN] = (data.target == 0).astype(int).to_numpy()
    frame["sex"] = rng.choice(["male", "female", "other", "unknown"], size=len(frame), p=[0.45, 0.45, 0.05, 0.05])
    frame["patient_pseudonym"] = [f"P{index:05d}" for index in range(len(frame))]
    frame[SPLIT_COLUMN] = rng.choice(["train", "validation", "test"], size=len(frame), p=[0.6, 0.2, 0.2])
    return frame, numeric_columns + CATEGORICAL_COLUMNS


def fitted_preprocessing(frame: pd.DataFrame, feature_columns: list[str], **spec: object) -> FittedPreprocessing:
    """What the curate stage hands training: the declared pipeline fitted on the frame's training split."""
    numeric = tuple(c for c in feature_columns if c not in CATEGORICAL_COLUMNS)
    categorical = tuple(c for c in feature_columns if c in CATEGORICAL_COLUMNS)
    declaration = PreprocessingSpec(numeric_columns=numeric, categorical_columns=categorical, **spec)  # type: ignore[arg-type]
    return fit_preprocessing(frame, declaration, label=LABEL_COLUMN, split_column=SPLIT_COLUMN)
