"""What the tabular zoo's models share: their configuration, their data and how they are scored.

The gradient-boosted trees, the random forest, the ensembles and the tuned
MLP of a spec (lib/train/gbm.py, ensembles.py, tuning.py) all read the zoo
configuration (lib/train/configs/<spec>_zoo.yaml, a versioned data file),
train on the arrays the curate stage's fitted preprocessing makes of one
dataset version (``ZooData``), and are scored with the evaluation stage's
metric conventions (``classification_metrics``), so that every row of a
comparison means the same thing.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing
from medllm_pipelines.lib.evaluate.metrics import binary_classification_metrics

CONFIGS_DIR = Path(__file__).with_name("configs")
ZOO_SIZES = ("demo", "full")
SPLITS = ("train", "validation", "test")
REPORTED_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1")
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"


@dataclass(frozen=True)
class ZooConfig:
    """The zoo configuration of one spec at one size (the ``full`` block deep-merged over the demo defaults)."""

    spec_id: str
    version: str
    size: str
    families: dict[str, dict[str, Any]]
    ensembles: dict[str, Any]
    study: dict[str, Any]
    path: Path
    sha256: str

    def family(self, name: str) -> dict[str, Any]:
        if name not in self.families:
            raise ValueError(f"spec {self.spec_id}: the zoo configuration {self.path.name} has no family {name!r}; "
                             f"it has {', '.join(sorted(self.families))}")
        return dict(self.families[name])

    def as_metadata(self) -> dict[str, Any]:
        return {"zoo_config": self.path.name, "zoo_config_version": self.version, "zoo_config_size": self.size,
                "zoo_config_sha256": self.sha256}


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``base``, mappings merged key by key, anything else replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_zoo_config(spec_id: str, size: str = "demo", path: str | Path | None = None) -> ZooConfig:
    """The zoo configuration of ``spec_id`` at ``size`` ("demo": the file's top level; "full": with its overrides)."""
    if size not in ZOO_SIZES:
        raise ValueError(f"spec {spec_id}: training size must be one of {', '.join(ZOO_SIZES)}, got {size!r}")
    path = Path(path) if path is not None else CONFIGS_DIR / f"{spec_id}_zoo.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"spec {spec_id}: no zoo configuration at {path}")
    text = path.read_text()
    raw = yaml.safe_load(text) or {}
    if raw.get("spec") not in (None, spec_id):
        raise ValueError(f"{path.name} configures spec {raw.get('spec')!r}, not {spec_id!r}")
    if size == "full":
        raw = deep_merge(raw, raw.get("full") or {})
    for block in ("families", "ensembles", "study"):
        if not isinstance(raw.get(block) or {}, Mapping):
            raise ValueError(f"spec {spec_id}: {block} in {path.name} must be a mapping")
    return ZooConfig(
        spec_id=spec_id,
        version=str(raw.get("version", "0")),
        size=size,
        families={name: dict(block or {}) for name, block in (raw.get("families") or {}).items()},
        ensembles=dict(raw.get("ensembles") or {}),
        study=dict(raw.get("study") or {}),
        path=path,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


@dataclass(frozen=True)
class ZooData:
    """Preprocessed features and 0/1 labels per split of one dataset version (float32 / int64 arrays)."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    feature_names: list[str]
    dataset_version: str | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, preprocessing: FittedPreprocessing, *, dataset_version: str | None = None,
                   label_column: str = LABEL_COLUMN, split_column: str = SPLIT_COLUMN, spec_id: str = "") -> ZooData:
        """Apply the curate stage's fitted pipeline unchanged to each split; nothing is fitted here."""
        where = f"spec {spec_id}: " if spec_id else ""
        if dataset_version is not None and preprocessing.dataset_version not in (None, dataset_version):
            raise ValueError(f"{where}preprocessing was fitted for dataset version {preprocessing.dataset_version[:16]}, "
                             f"not {dataset_version[:16]}: materialise the curate stage's preprocessing again")
        features: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for split in SPLITS:
            rows = frame[frame[split_column] == split]
            values = pd.to_numeric(rows[label_column], errors="coerce")
            if not values.isin([0, 1]).all():
                raise ValueError(f"{where}{int((~values.isin([0, 1])).sum())} rows of the {split} split have a "
                                 f"{label_column!r} that is not 0 or 1")
            features[split] = preprocessing.transform_array(rows)
            labels[split] = values.to_numpy(dtype=np.int64)
        if len(labels["train"]) == 0 or len(labels["validation"]) == 0:
            raise ValueError(f"{where}need rows in the train and validation splits; got "
                             f"{len(labels['train'])} and {len(labels['validation'])}")
        if len(np.unique(labels["train"])) < 2:
            raise ValueError(f"{where}the training split holds only one class; a classifier cannot be fitted")
        return cls(features, labels, list(preprocessing.output_features), dataset_version)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def rows(self) -> dict[str, int]:
        return {split: int(len(self.labels[split])) for split in SPLITS}

    def input_example(self) -> np.ndarray:
        """Zeros, never real rows: an input example is stored in the artifact store in clear."""
        return np.zeros((2, self.n_features), dtype=np.float32)


def log_dataset_inputs(dataset: Any, preprocessing: FittedPreprocessing, *, name: str) -> None:
    """The training and validation rows as inputs of the active MLflow run: the model's declared inputs and the
    label only (no pseudonym), so that the run's Datasets field names what it learnt from and selected on."""
    from medllm_pipelines.lib.train.tracking import log_dataset_input

    columns = [c for c in preprocessing.input_columns if c in dataset.frame.columns]
    for split, context in (("train", "training"), ("validation", "validation")):
        rows = dataset.frame[dataset.frame[SPLIT_COLUMN] == split][[*columns, LABEL_COLUMN]].reset_index(drop=True)
        log_dataset_input(rows, name=f"{name}-{split}", dataset_version=dataset.version, context=context,
                          targets=LABEL_COLUMN)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float | None]:
    """ROC-AUC, accuracy, sensitivity, specificity, precision and F1 (lib/evaluate/metrics conventions).

    An empty split gives every metric None; an undefined one (one class) is None, never a made-up number.
    """
    if len(labels) == 0:
        return {name: None for name in REPORTED_METRICS}
    metrics = binary_classification_metrics(labels, probabilities, threshold)
    return {name: metrics[name] for name in REPORTED_METRICS}


def split_metrics(labels: Mapping[str, np.ndarray], probabilities: Mapping[str, np.ndarray],
                  threshold: float = 0.5, splits: tuple[str, ...] = ("validation", "test")) -> dict[str, float]:
    """``{"val_roc_auc": ..., "test_f1": ...}`` for ``splits``; undefined metrics are left out (MLflow takes numbers)."""
    prefix = {"validation": "val", "test": "test", "train": "train"}
    flat: dict[str, float] = {}
    for split in splits:
        for name, value in classification_metrics(labels[split], probabilities[split], threshold).items():
            if value is not None:
                flat[f"{prefix[split]}_{name}"] = float(value)
    return flat


@dataclass(frozen=True)
class SavedModel:
    """A pickled scikit-learn-style model in a directory, with the SHA-256 checked before it is unpickled."""

    model_dir: Path
    model_file: Path
    description: dict[str, Any] = field(default_factory=dict)


MODEL_FILE = "model.joblib"
DESCRIPTION_FILE = "model_spec.json"


def save_model_dir(model: Any, model_dir: Path, description: Mapping[str, Any]) -> SavedModel:
    """Write ``model`` (joblib) and a JSON description with its SHA-256 to ``model_dir`` (replaced)."""
    import joblib

    model_dir.mkdir(parents=True, exist_ok=True)
    model_file = model_dir / MODEL_FILE
    joblib.dump(model, model_file)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    described = {**description, "files": {"model": MODEL_FILE}, "sha256": {"model": digest}}
    (model_dir / DESCRIPTION_FILE).write_text(json.dumps(described, indent=2, sort_keys=True, default=str) + "\n")
    return SavedModel(model_dir, model_file, described)


def load_model_dir(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The model in ``model_dir`` and its description; refuses a model file whose bytes differ from those recorded."""
    import joblib

    model_dir = Path(model_dir)
    description_path = model_dir / DESCRIPTION_FILE
    if not description_path.is_file():
        raise FileNotFoundError(f"no trained model in {model_dir}")
    description = json.loads(description_path.read_text())
    model_file = model_dir / description["files"]["model"]
    if hashlib.sha256(model_file.read_bytes()).hexdigest() != description["sha256"]["model"]:
        raise ValueError(f"{model_file} does not match the SHA-256 in {DESCRIPTION_FILE}: not unpickled")
    return joblib.load(model_file), description
