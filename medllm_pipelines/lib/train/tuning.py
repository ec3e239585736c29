"""Hyper-parameter search for the tabular MLP with Optuna (issue 11 item 3, row M5).

The study is declared in the zoo configuration (lib/train/configs/<spec>_zoo.yaml,
``study:``): the sampler (grid, random or TPE), the number of trials, the
metric, the search space. Each trial trains the spec's Lightning MLP
(network, training system and data module from lib/train/tabular.py) with
early stopping on the validation loss and optuna_integration's
PyTorchLightningPruningCallback, which reports the metric every epoch and
stops a trial the MedianPruner finds unpromising. Each trial is an MLflow run
nested in the study's run; the best configuration is then retrained through
the same path as the MLP asset (train_tabular_classifier), logged to the
study's run with its early-stopping epoch, and registered as ``<spec>-tuned``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
import pandas as pd
from lightning.pytorch.callbacks import Callback, EarlyStopping

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing
from medllm_pipelines.lib.train.callbacks import quiet_lightning
from medllm_pipelines.lib.train.optim import check_component
from medllm_pipelines.lib.train.tabular import (
    BinaryClassificationSystem,
    TabularDataModule,
    TabularMLP,
    TrainConfig,
    TrainResult,
    train_tabular_classifier,
)
from medllm_pipelines.lib.train.zoo import LABEL_COLUMN, ZooConfig, log_dataset_inputs, split_metrics

SAMPLERS = ("grid", "random", "tpe")
STUDY_METRICS = {"val_loss": "minimize", "val_roc_auc": "maximize"}
PARAMETER_TYPES = ("float", "int", "categorical")
TUNABLE = tuple(f.name for f in fields(TrainConfig) if not f.name.startswith("dp_"))
TUNED_VARIANT = "tuned"
TRIALS_ARTIFACT = "study_trials.json"
PRUNED_TAG = "optuna.trial_state"


@dataclass(frozen=True)
class StudyConfig:
    """The ``study:`` block of a zoo configuration, checked before any trial runs."""

    sampler: str = "tpe"
    n_trials: int = 6
    metric: str = "val_loss"
    direction: str = "minimize"
    seed: int = 7
    max_epochs: int = 15
    early_stopping_patience: int = 4
    pruner: dict[str, int] = field(default_factory=lambda: {"n_startup_trials": 2, "n_warmup_steps": 3})
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, spec_id: str, raw: Mapping[str, Any]) -> StudyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"spec {spec_id}: unknown study keys {unknown}; known: {sorted(known)}")
        study = cls(**dict(raw))
        check_component("sampler", study.sampler, SAMPLERS, spec_id)
        check_component("study metric", study.metric, tuple(STUDY_METRICS), spec_id)
        if study.direction != STUDY_METRICS[study.metric]:
            raise ValueError(f"spec {spec_id}: the study {study.direction}s {study.metric}; it must "
                             f"{STUDY_METRICS[study.metric]} it")
        if study.n_trials < 1 or study.max_epochs < 1 or study.early_stopping_patience < 0:
            raise ValueError(f"spec {spec_id}: study n_trials and max_epochs must be >= 1, patience >= 0")
        if not study.search_space:
            raise ValueError(f"spec {spec_id}: the study has an empty search space")
        for name, declared in study.search_space.items():
            check_component("tunable hyper-parameter", name, TUNABLE, spec_id)
            check_component(f"parameter type of {name}", declared.get("type"), PARAMETER_TYPES, spec_id)
            if declared["type"] == "categorical" and not declared.get("choices"):
                raise ValueError(f"spec {spec_id}: categorical parameter {name} lists no choices")
            if declared["type"] != "categorical" and not declared.get("low", 0) < declared.get("high", 0):
                raise ValueError(f"spec {spec_id}: parameter {name} needs low < high")
        if study.sampler == "grid" and not study.grid():
            raise ValueError(f"spec {spec_id}: the grid sampler needs `grid` values on at least one parameter")
        return study

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's space: the parameters that list ``grid`` values."""
        return {name: list(declared["grid"]) for name, declared in self.search_space.items() if declared.get("grid")}

    def active_space(self) -> dict[str, dict[str, Any]]:
        """What a trial suggests: the grid's parameters under the grid sampler, every parameter otherwise."""
        if self.sampler == "grid":
            return {name: self.search_space[name] for name in self.grid()}
        return dict(self.search_space)

    def as_params(self) -> dict[str, str]:
        return {"study.sampler": self.sampler, "study.n_trials": str(self.n_trials), "study.metric": self.metric,
                "study.direction": self.direction, "study.seed": str(self.seed),
                "study.max_epochs": str(self.max_epochs), "study.early_stopping_patience": str(self.early_stopping_patience),
                "study.pruner": f"median {self.pruner}", "study.search_space": str(self.active_space())[:500]}


def make_sampler(study: StudyConfig, spec_id: str = "") -> optuna.samplers.BaseSampler:
    """The sampler the study names, seeded."""
    check_component("sampler", study.sampler, SAMPLERS, spec_id)
    if study.sampler == "grid":
        return optuna.samplers.GridSampler(study.grid(), seed=study.seed)
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=study.seed)
    return optuna.samplers.TPESampler(seed=study.seed)


def parse_hidden_sizes(value: Any) -> tuple[int, ...]:
    """"32x16" -> (32, 16); a list is taken as it is (Optuna's categorical choices are scalars)."""
    if isinstance(value, str):
        return tuple(int(size) for size in value.lower().split("x") if size)
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(size) for size in value)


def suggest_config(trial: optuna.Trial, study: StudyConfig, base: TrainConfig) -> TrainConfig:
    """The base configuration with the trial's suggestions, the study's epochs and patience."""
    suggested: dict[str, Any] = {}
    for name, declared in study.active_space().items():
        if declared["type"] == "categorical":
            choices = list(declared.get("grid") or declared["choices"]) if study.sampler == "grid" else list(declared["choices"])
            if study.sampler == "grid":
                choices = list(dict.fromkeys([*declared["choices"], *choices]))
            value: Any = trial.suggest_categorical(name, choices)
        elif declared["type"] == "int":
            value = trial.suggest_int(name, int(declared["low"]), int(declared["high"]), log=bool(declared.get("log")))
        else:
            low = min([float(declared["low"]), *map(float, declared.get("grid") or [])])
            high = max([float(declared["high"]), *map(float, declared.get("grid") or [])])
            value = trial.suggest_float(name, low, high, log=bool(declared.get("log")))
        suggested[name] = parse_hidden_sizes(value) if name == "hidden_sizes" else value
    return replace(base, **suggested, max_epochs=study.max_epochs, early_stopping_patience=study.early_stopping_patience)


class TrialCurves(Callback):
    """Streams each epoch's metrics to the trial's MLflow run and keeps the best value of the study's metric."""

    def __init__(self, run_id: str, metric: str, direction: str) -> None:
        from medllm_pipelines.lib.train.tracking import make_mlflow_epoch_logger

        self.log_epoch = make_mlflow_epoch_logger(run_id)
        self.metric = metric
        self.better = (lambda new, old: new < old) if direction == "minimize" else (lambda new, old: new > old)
        self.best_value = math.nan
        self.best_epoch = -1
        self.epochs_run = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        self.log_epoch(metrics, trainer.current_epoch)
        self.epochs_run = trainer.current_epoch + 1
        value = metrics.get(self.metric, math.nan)
        if math.isfinite(value) and (self.best_epoch < 0 or self.better(value, self.best_value)):
            self.best_value, self.best_epoch = value, trainer.current_epoch


@contextmanager
def _quiet() -> Iterator[None]:
    """quiet_lightning, and Optuna's per-trial INFO lines and experimental-feature warnings: noise in a Dagster log."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with quiet_lightning(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def _pos_weight(config: TrainConfig, labels: np.ndarray) -> float | None:
    if config.pos_weight == "balanced":
        positives = float(labels.sum())
        return (len(labels) - positives) / positives
    return None if config.pos_weight is None else float(config.pos_weight)


def fit_trial(trial: optuna.Trial, frame: pd.DataFrame, preprocessing: FittedPreprocessing, config: TrainConfig,
              study: StudyConfig, run_id: str, spec_id: str = "") -> TrialCurves:
    """One trial's training: the Lightning MLP, early stopping on val_loss and Optuna's pruning callback.

    Raises optuna.TrialPruned when the pruner stops it (after its curves were logged).
    """
    from optuna_integration import PyTorchLightningPruningCallback

    L.seed_everything(config.seed, workers=True, verbose=False)
    data = TabularDataModule(frame, preprocessing, LABEL_COLUMN, batch_size=config.batch_size, seed=config.seed)
    data.setup("fit")
    assert data.train_dataset is not None
    network = TabularMLP(data.n_features, config.hidden_sizes, config.activation, config.dropout)
    system = BinaryClassificationSystem(network, config.optimizer, config.lr, config.weight_decay,
                                        _pos_weight(config, data.train_dataset.tensors[1].numpy()),
                                        scheduler=config.scheduler, momentum=config.momentum, spec_id=spec_id)
    curves = TrialCurves(run_id, study.metric, study.direction)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=config.max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True, num_sanity_val_steps=0,
        callbacks=[curves, EarlyStopping(monitor="val_loss", mode="min", patience=config.early_stopping_patience),
                   PyTorchLightningPruningCallback(trial, monitor=study.metric)],
    )
    trainer.fit(system, datamodule=data)
    return curves


def make_objective(frame: pd.DataFrame, preprocessing: FittedPreprocessing, base: TrainConfig, study: StudyConfig,
                   spec_id: str, tags: Mapping[str, str]) -> Any:
    """The study's objective: each trial is a nested MLflow run of the active (study) run."""
    import mlflow

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, study, base)
        experiment_id = mlflow.active_run().info.experiment_id  # a nested run goes to its parent's experiment
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True, experiment_id=experiment_id,
                              tags={**tags, "optuna.trial_number": str(trial.number)}) as run:
            mlflow.log_params({**{key: str(value) for key, value in config.to_dict().items()},
                               "trial_number": trial.number}, synchronous=True)
            pruned: optuna.TrialPruned | None = None
            try:
                curves = fit_trial(trial, frame, preprocessing, config, study, run.info.run_id, spec_id)
            except optuna.TrialPruned as stop:
                pruned, curves = stop, None
            if pruned is not None:
                mlflow.set_tag(PRUNED_TAG, "PRUNED")
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
            else:
                assert curves is not None
                stopped_early = curves.epochs_run < config.max_epochs
                mlflow.set_tag(PRUNED_TAG, "COMPLETE")
                mlflow.log_params({"best_epoch": curves.best_epoch, "epochs_run": curves.epochs_run,
                                   "stopped_early": stopped_early}, synchronous=True)
                mlflow.log_metric(f"best_{study.metric}", curves.best_value, step=max(curves.best_epoch, 0))
                for key, value in {"mlflow_run_id": run.info.run_id, "best_epoch": curves.best_epoch,
                                   "epochs_run": curves.epochs_run, "stopped_early": stopped_early}.items():
                    trial.set_user_attr(key, value)
        if pruned is not None:
            raise pruned
        if not math.isfinite(curves.best_value):
            raise FloatingPointError(f"spec {spec_id}: trial {trial.number} never reported a finite {study.metric}")
        return curves.best_value

    return objective


@dataclass(frozen=True)
class TuningResult:
    """The study, its best trial, and the best configuration retrained, logged and registered."""

    spec_id: str
    dataset_version: str
    study_config: StudyConfig
    trials: pd.DataFrame
    best_trial: int
    best_value: float
    best_config: TrainConfig
    retrained: TrainResult
    metrics: dict[str, float]
    run_id: str
    model_uri: str
    registered: Any
    study_seconds: float
    zoo: ZooConfig

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        """What the model store keeps beside the retrained model (as the MLP's training record)."""
        return {"mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
                "dataset_version": self.dataset_version, "model_dir": str(self.retrained.model_dir),
                "family": "mlp", "dagster_run_id": dagster_run_id, "best_trial": self.best_trial}

    def summary(self) -> str:
        return (f"{self.spec_id} study ({self.study_config.sampler}, {len(self.trials)} trials): best trial "
                f"{self.best_trial} {self.study_config.metric}={self.best_value:.4f}; retrained, early-stopping "
                f"epoch {self.retrained.best_epoch} of {self.retrained.epochs_run}")

    def as_metadata(self) -> dict[str, Any]:
        states = self.trials["state"].value_counts().to_dict() if len(self.trials) else {}
        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri,
            "sampler": self.study_config.sampler,
            "n_trials": int(len(self.trials)),
            "trials_complete": int(states.get("COMPLETE", 0)),
            "trials_pruned": int(states.get("PRUNED", 0)),
            "study_metric": self.study_config.metric,
            "best_trial": self.best_trial,
            "best_value": round(self.best_value, 5),
            "best_config": self.best_config.to_dict(),
            "retrained_best_epoch": self.retrained.best_epoch,
            "retrained_epochs_run": self.retrained.epochs_run,
            "retrained_stopped_early": self.retrained.stopped_early,
            "metrics": {key: round(value, 4) for key, value in self.metrics.items()},
            "study_seconds": round(self.study_seconds, 2),
            **self.registered.as_metadata(),
            **self.zoo.as_metadata(),
        }


def run_study(frame: pd.DataFrame, preprocessing: FittedPreprocessing, base: TrainConfig, study: StudyConfig,
              spec_id: str, tags: Mapping[str, str] | None = None) -> optuna.Study:
    """Run the study's trials inside the active MLflow run (each a nested run); returns the Optuna study."""
    with _quiet():
        optuna_study = optuna.create_study(
            study_name=f"{spec_id}-mlp", direction=study.direction, sampler=make_sampler(study, spec_id),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=int(study.pruner.get("n_startup_trials", 2)),
                                               n_warmup_steps=int(study.pruner.get("n_warmup_steps", 3))),
        )
        optuna_study.optimize(make_objective(frame, preprocessing, base, study, spec_id, dict(tags or {})),
                              n_trials=study.n_trials, gc_after_trial=False)
    return optuna_study


def trials_table(optuna_study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, parameters and what the trial recorded (JSON-ready)."""
    table = optuna_study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds().round(3)
    return table.astype(object).where(table.notna(), None)


def tune_and_retrain(
    dataset: SplitDataset,
    preprocessing: FittedPreprocessing,
    base: TrainConfig,
    zoo: ZooConfig,
    output_dir: Path,
    *,
    tags: dict[str, str] | None = None,
) -> TuningResult:
    """The study in the active MLflow run (its trials nested), then the best configuration retrained and registered.

    Any error (an unknown sampler, every trial pruned, a NaN loss) tags the
    study's run with ``failure_reason`` and is raised again: the run ends
    FAILED and nothing is registered.
    """
    import mlflow

    from medllm_pipelines.lib.train.gbm import register_variant
    from medllm_pipelines.lib.train.predictor import TabularPredictor
    from medllm_pipelines.lib.train.tracking import (
        log_training,
        make_mlflow_epoch_logger,
        mark_failed,
    )

    try:
        study = StudyConfig.from_mapping(zoo.spec_id, zoo.study)
        if preprocessing.dataset_version not in (None, dataset.version):
            raise ValueError(f"spec {zoo.spec_id}: preprocessing was fitted for another dataset version")
        if base.private:
            raise ValueError(f"spec {zoo.spec_id}: tuning a DP-SGD training is not supported (its budget is per run)")
        run_id = mlflow.active_run().info.run_id
        mlflow.log_params({**study.as_params(), "zoo_config_version": zoo.version, "zoo_config_size": zoo.size},
                          synchronous=True)
        mlflow.set_tag("optuna.study", f"{zoo.spec_id}-mlp")
        log_dataset_inputs(dataset, preprocessing, name=zoo.spec_id)
        started = time.perf_counter()
        optuna_study = run_study(dataset.frame, preprocessing, base, study, zoo.spec_id, tags)
        study_seconds = time.perf_counter() - started
        table = trials_table(optuna_study)
        mlflow.log_table(table, artifact_file=TRIALS_ARTIFACT)
        for trial in optuna_study.trials:
            if trial.value is not None:
                mlflow.log_metric(f"trial_{study.metric}", float(trial.value), step=trial.number)
        completed = [t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise RuntimeError(f"spec {zoo.spec_id}: no trial of the study completed (all pruned or failed)")
        best = optuna_study.best_trial
        # the best trial's configuration, rebuilt from its parameters exactly as the trial built it
        best_config = suggest_config(optuna.trial.FixedTrial(best.params), study, base)
        mlflow.log_params({"best_trial": best.number, f"best_trial_{study.metric}": round(float(best.value), 6)},
                          synchronous=True)
        with _quiet():
            retrained = train_tabular_classifier(dataset.frame, preprocessing, LABEL_COLUMN, best_config, output_dir,
                                                 on_epoch_metrics=make_mlflow_epoch_logger(run_id), spec_id=zoo.spec_id)
        logged = log_training(retrained, best_config, dataset.version, tags=tags, log_history=False)
        predictor = TabularPredictor.load(retrained.model_dir)
        labels = {split: dataset.split(split)[LABEL_COLUMN].to_numpy(dtype=np.int64) for split in ("validation", "test")}
        scores = {split: predictor.predict_proba(dataset.split(split)) for split in ("validation", "test")}
        metrics = split_metrics(labels, scores, predictor.threshold)
        mlflow.log_metrics({key: value for key, value in metrics.items() if key.startswith("test_")}, synchronous=True)
        registered = register_variant(logged.model_uri, zoo.spec_id, "mlp", dataset.version, metrics, variant=TUNED_VARIANT)
    except Exception as error:
        mark_failed(f"{type(error).__name__}: {error}")
        raise
    return TuningResult(zoo.spec_id, dataset.version, study, table, best.number, float(best.value), best_config,
                        retrained, metrics, run_id, logged.model_uri, registered, study_seconds, zoo)
