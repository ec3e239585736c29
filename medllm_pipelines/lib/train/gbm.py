"""Tree models of the tabular zoo: LightGBM gradient boosting and a scikit-learn random forest (issue 11 item 2).

They train on the arrays the curate stage's fitted preprocessing makes of the
dataset version the MLP trains on (lib/train/zoo.ZooData), so that the three
models and their ensembles differ only in the learner. LightGBM stops early
on the validation split's log-loss and keeps its best iteration; both are
seeded and single-threaded, so a rerun on the same data gives the same model.
``train_tree_family`` is what the train asset calls inside its MLflow run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing, save_preprocessing
from medllm_pipelines.lib.train.optim import check_component
from medllm_pipelines.lib.train.zoo import (
    SPLITS,
    SavedModel,
    ZooConfig,
    ZooData,
    log_dataset_inputs,
    save_model_dir,
    split_metrics,
)

GBM = "gbm"
RANDOM_FOREST = "random_forest"
TREE_FAMILIES = (GBM, RANDOM_FOREST)
MODEL_DIRNAME = "model"
GBM_KEYS = ("n_estimators", "early_stopping_rounds", "learning_rate", "num_leaves", "max_depth", "min_child_samples",
            "subsample", "subsample_freq", "colsample_bytree", "reg_lambda", "seed")
FOREST_KEYS = ("n_estimators", "max_depth", "min_samples_leaf", "max_features", "class_weight", "seed")
TREE_PACKAGES = ("lightgbm", "scikit-learn", "numpy", "pandas")


@dataclass(frozen=True)
class TreeFit:
    """A fitted tree model, its per-split probabilities and how training went (0-based iterations)."""

    family: str
    model: Any
    params: dict[str, Any]
    probabilities: dict[str, np.ndarray]
    curves: dict[str, list[float]]
    best_iteration: int
    iterations_run: int
    stopped_early: bool
    train_seconds: float


def _checked_params(spec_id: str, family: str, params: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"spec {spec_id}: unknown {family} hyper-parameters {unknown}; known: {list(known)}")
    return dict(params)


def fit_gbm(data: ZooData, params: dict[str, Any], *, spec_id: str = "") -> TreeFit:
    """LightGBM on the training split, stopped early on the validation log-loss (its best iteration is kept)."""
    import lightgbm

    params = _checked_params(spec_id, GBM, params, GBM_KEYS)
    rounds = int(params.pop("early_stopping_rounds", 25))
    seed = int(params.pop("seed", 7))
    started = time.perf_counter()
    model = lightgbm.LGBMClassifier(objective="binary", random_state=seed, deterministic=True, force_row_wise=True,
                                    n_jobs=1, verbose=-1, **params)
    train_x, train_y = data.features["train"], data.labels["train"]
    evaluations: dict[str, Any] = {}
    model.fit(
        train_x, train_y,
        eval_X=(train_x, data.features["validation"]),
        eval_y=(train_y, data.labels["validation"]),
        eval_names=["train", "validation"],
        eval_metric=["binary_logloss", "auc"],
        callbacks=[lightgbm.early_stopping(rounds, first_metric_only=True, verbose=False),
                   lightgbm.record_evaluation(evaluations)],
    )
    curves = {"train_loss": list(evaluations["train"]["binary_logloss"]),
              "val_loss": list(evaluations["validation"]["binary_logloss"]),
              "val_roc_auc": list(evaluations["validation"].get("auc", []))}
    iterations_run = len(curves["val_loss"])
    if not np.isfinite(curves["train_loss"]).all():
        raise FloatingPointError(f"spec {spec_id}: the GBM's training loss became non-finite; check the inputs")
    best = int(model.best_iteration_ or iterations_run)  # LightGBM counts from 1
    return TreeFit(GBM, model, {**params, "early_stopping_rounds": rounds, "seed": seed}, _probabilities(model, data),
                   curves, best - 1, iterations_run, iterations_run < int(params.get("n_estimators", 100)),
                   time.perf_counter() - started)


def fit_random_forest(data: ZooData, params: dict[str, Any], *, spec_id: str = "") -> TreeFit:
    """A random forest on the training split (no early stopping: every tree is grown)."""
    from sklearn.ensemble import RandomForestClassifier

    params = _checked_params(spec_id, RANDOM_FOREST, params, FOREST_KEYS)
    seed = int(params.pop("seed", 7))
    started = time.perf_counter()
    model = RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    model.fit(data.features["train"], data.labels["train"])
    trees = int(model.n_estimators)
    return TreeFit(RANDOM_FOREST, model, {**params, "seed": seed}, _probabilities(model, data), {}, trees - 1, trees,
                   False, time.perf_counter() - started)


def _probabilities(model: Any, data: ZooData) -> dict[str, np.ndarray]:
    return {split: (model.predict_proba(data.features[split])[:, 1].astype(np.float64) if len(data.labels[split])
                    else np.empty(0)) for split in SPLITS}


def fit_tree_family(family: str, data: ZooData, zoo: ZooConfig) -> TreeFit:
    """The family's model with the zoo configuration's hyper-parameters; an unknown family names the choices."""
    check_component("tabular family", family, TREE_FAMILIES, zoo.spec_id)
    fit = fit_gbm if family == GBM else fit_random_forest
    return fit(data, zoo.family(family), spec_id=zoo.spec_id)


@dataclass(frozen=True)
class TreeTraining:
    """A tree model trained, logged to the active MLflow run and registered."""

    spec_id: str
    family: str
    dataset_version: str
    fit: TreeFit
    metrics: dict[str, float]
    saved: SavedModel
    run_id: str
    model_uri: str
    registered: Any
    zoo: ZooConfig
    rows: dict[str, int] = field(default_factory=dict)

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        """What the model store keeps beside the model (as the MLP's training record)."""
        return {"mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
                "dataset_version": self.dataset_version, "model_dir": str(self.saved.model_dir),
                "family": self.family, "dagster_run_id": dagster_run_id}

    def summary(self) -> str:
        return (f"trained {self.spec_id}-{self.family}: best iteration {self.fit.best_iteration} of "
                f"{self.fit.iterations_run}, val ROC-AUC {self.metrics.get('val_roc_auc')}")

    def as_metadata(self) -> dict[str, Any]:
        return {
            "trained": True,
            "family": self.family,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri,
            "best_iteration": self.fit.best_iteration,
            "iterations_run": self.fit.iterations_run,
            "stopped_early": self.fit.stopped_early,
            "train_seconds": round(self.fit.train_seconds, 2),
            "rows_per_split": self.rows,
            "metrics": {key: round(value, 4) for key, value in self.metrics.items()},
            "hyper_parameters": self.fit.params,
            "model_dir": str(self.saved.model_dir),
            **self.registered.as_metadata(),
            **self.zoo.as_metadata(),
        }


def train_tree_family(
    family: str,
    dataset: SplitDataset,
    preprocessing: FittedPreprocessing,
    zoo: ZooConfig,
    output_dir: Path,
    *,
    tags: dict[str, str] | None = None,
    threshold: float | None = None,
) -> TreeTraining:
    """Fit ``family`` on ``dataset``, log it to the active MLflow run and register it as ``<spec>-<family>``.

    Inside a run the caller opened (one materialisation, one run). Any error
    tags the run with ``failure_reason`` and is raised again: the run ends
    FAILED and nothing is registered.
    """
    import mlflow

    from medllm_pipelines.lib.train.tracking import mark_failed

    try:
        data = ZooData.from_frame(dataset.frame, preprocessing, dataset_version=dataset.version, spec_id=zoo.spec_id)
        fit = fit_tree_family(family, data, zoo)
        cutoff = float(zoo.ensembles.get("threshold", 0.5) if threshold is None else threshold)
        metrics = split_metrics(data.labels, fit.probabilities, cutoff)
        model_dir = Path(output_dir) / MODEL_DIRNAME
        saved = save_model_dir(fit.model, model_dir, {
            "family": family, "spec_id": zoo.spec_id, "dataset_version": dataset.version,
            "preprocessing_fingerprint": preprocessing.fingerprint(), "feature_names_out": data.feature_names,
            "hyper_parameters": fit.params, "best_iteration": fit.best_iteration, "decision_threshold": cutoff,
            "metrics": metrics, **zoo.as_metadata(),
        })
        save_preprocessing(preprocessing, model_dir)
        logged_uri = log_tree_fit(fit, data, dataset, preprocessing, metrics, tags or {}, zoo)
        mlflow.log_artifacts(str(model_dir), artifact_path="model_dir")
        registered = register_variant(logged_uri, zoo.spec_id, family, dataset.version, metrics)
    except Exception as error:
        mark_failed(f"{type(error).__name__}: {error}")
        raise
    run_id = mlflow.active_run().info.run_id
    return TreeTraining(zoo.spec_id, family, dataset.version, fit, metrics, saved, run_id, logged_uri, registered, zoo,
                        data.rows())


def register_variant(model_uri: str, spec_id: str, family: str, dataset_version: str, metrics: dict[str, float],
                     variant: str | None = None) -> Any:
    """Register under ``<spec>-<variant>`` (variant defaults to the family), alias ``challenger``."""
    from medllm_pipelines.lib.train.registry import register_model

    return register_model(model_uri, spec_id, family=family, dataset_version=dataset_version, metrics=metrics,
                          name=f"{spec_id}-{variant or family}")


def log_tree_fit(fit: TreeFit, data: ZooData, dataset: SplitDataset, preprocessing: FittedPreprocessing,
                 metrics: dict[str, float],
                 tags: dict[str, str], zoo: ZooConfig) -> str:
    """Params, per-iteration curves, the summary, the dataset input, the metrics and the model; returns its URI."""
    import mlflow
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.tracking import (
        DATASET_VERSION_TAG,
        log_training_summary,
        pinned_pip_requirements,
    )

    mlflow.set_tags({DATASET_VERSION_TAG: dataset.version, "model_family": fit.family, **tags})
    mlflow.log_params({**{key: str(value) for key, value in fit.params.items()}, "family": fit.family,
                       "dataset_version": dataset.version, "n_features_out": data.n_features,
                       **{f"n_{split}": rows for split, rows in data.rows().items()},
                       "zoo_config_version": zoo.version, "zoo_config_size": zoo.size}, synchronous=True)
    log_dataset_inputs(dataset, preprocessing, name=zoo.spec_id)
    log_curves(fit.curves)
    kept = {key: value for key, value in metrics.items() if key.startswith("val_")}
    log_training_summary(best_epoch=fit.best_iteration, epochs_run=fit.iterations_run, stopped_early=fit.stopped_early,
                         train_seconds=fit.train_seconds, kept_metrics=kept)
    mlflow.log_metrics({key: value for key, value in metrics.items() if key.startswith("test_")}, synchronous=True)
    example = data.input_example()
    # what the pyfunc flavour returns: LightGBM's labels, the forest's class probabilities
    output = fit.model.predict(example) if fit.family == GBM else fit.model.predict_proba(example)
    signature = infer_signature(example, output)
    requirements = pinned_pip_requirements(TREE_PACKAGES)
    if fit.family == GBM:
        import mlflow.lightgbm

        info = mlflow.lightgbm.log_model(fit.model, name="model", signature=signature, input_example=example,
                                         pip_requirements=requirements)
    else:
        import mlflow.sklearn

        info = mlflow.sklearn.log_model(fit.model, name="model", signature=signature, input_example=example,
                                        pip_requirements=requirements, serialization_format="cloudpickle",
                                        pyfunc_predict_fn="predict_proba")
    return info.model_uri


def log_curves(curves: dict[str, list[float]]) -> None:
    """Per-iteration curves of the active run (step = 0-based iteration), in batches of MLflow's limit."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    timestamp = int(time.time() * 1000)
    points = [Metric(key=name, value=float(value), timestamp=timestamp, step=step)
              for name, values in curves.items() for step, value in enumerate(values)]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[start:start + 1000], synchronous=True)
