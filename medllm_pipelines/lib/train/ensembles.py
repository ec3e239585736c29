"""Ensembles of the tabular zoo (issue 11 item 6, row M9): voting, bagging, boosting and stacking.

Every model here sees the same preprocessed features (lib/train/zoo.ZooData)
as the members it is compared with: the Lightning MLP, the LightGBM model and
the random forest, each already trained on the training split. The MLP joins
scikit-learn's ensembles through ``NetworkClassifier``; trained members are
wrapped in ``FrozenEstimator`` so that no ensemble refits them.

- soft_voting: the weighted mean of the members' probabilities (VotingClassifier).
- bagging: BaggingClassifier of a base learner on bootstrap samples of the training split.
- boosting: AdaBoostClassifier of a base learner (stumps by default) on the training split.
- stacking: StackingClassifier over the frozen members, its logistic meta-learner fitted on the
  validation split (members never saw it); its validation metrics are out-of-fold
  (k-fold cross_val_predict on the validation split), its test metrics from the meta-learner fitted
  on the whole validation split.

``compare_ensembles`` returns one table, a row per member and per ensemble,
columns per split and metric; ``train_ensembles`` logs it to the active
MLflow run and registers each ensemble as ``<spec>-<kind>`` (family ensemble).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.preprocessing import FittedPreprocessing
from medllm_pipelines.lib.train.optim import check_component
from medllm_pipelines.lib.train.zoo import (
    REPORTED_METRICS,
    SPLITS,
    ZooConfig,
    ZooData,
    classification_metrics,
    load_model_dir,
    log_dataset_inputs,
)

MLP = "mlp"
MEMBER_NAMES = ("mlp", "gbm", "random_forest")
ENSEMBLE_KINDS = ("soft_voting", "bagging", "boosting", "stacking")
BASE_LEARNERS = ("decision_tree", "logistic_regression")
META_LEARNERS = ("logistic_regression",)
COMPARED_SPLITS = ("validation", "test")
COMPARISON_ARTIFACT = "ensemble_comparison.json"
ENSEMBLE_PACKAGES = ("lightgbm", "scikit-learn", "numpy", "pandas", "torch")


class NetworkClassifier(ClassifierMixin, BaseEstimator):
    """A trained network returning one logit per row, as a fitted scikit-learn binary classifier.

    Already trained (the Lightning training system did it): ``fit`` is not
    supported, so wrap it in ``FrozenEstimator`` inside an ensemble.
    """

    def __init__(self, network: torch.nn.Module | None = None) -> None:
        self.network = network

    def __sklearn_is_fitted__(self) -> bool:
        return self.network is not None

    @property
    def classes_(self) -> np.ndarray:
        return np.array([0, 1])

    def fit(self, features: np.ndarray, labels: np.ndarray) -> NetworkClassifier:
        raise NotImplementedError("NetworkClassifier wraps a trained network; wrap it in FrozenEstimator")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        assert self.network is not None
        self.network.eval()
        with torch.no_grad():
            positive = torch.sigmoid(self.network(torch.as_tensor(np.asarray(features, dtype=np.float32)))).numpy()
        positive = positive.astype(np.float64).reshape(-1)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self.predict_proba(features)[:, 1] >= 0.5).astype(np.int64)


def _base_learner(name: str, options: Mapping[str, Any], seed: int, spec_id: str) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    check_component("ensemble base learner", name, BASE_LEARNERS, spec_id)
    if name == "decision_tree":
        return DecisionTreeClassifier(max_depth=options.get("max_depth"), random_state=seed)
    return LogisticRegression(max_iter=1000)


def _frozen(members: Mapping[str, Any], names: list[str], spec_id: str) -> list[tuple[str, Any]]:
    from sklearn.frozen import FrozenEstimator

    missing = [name for name in names if name not in members]
    if missing:
        raise ValueError(f"spec {spec_id}: ensemble members {missing} were not trained; have {sorted(members)}")
    return [(name, FrozenEstimator(members[name])) for name in names]


@dataclass(frozen=True)
class EnsembleFit:
    """One ensemble: the fitted model, its probabilities per split and what was done to fit it."""

    kind: str
    model: Any
    probabilities: dict[str, np.ndarray]
    fitted_on: str
    options: dict[str, Any]
    seconds: float


def fit_ensemble(kind: str, members: Mapping[str, Any], data: ZooData, options: Mapping[str, Any], *,
                 spec_id: str = "") -> EnsembleFit:
    """Fit one ensemble ``kind`` with its configuration block ``options`` (see the module docstring)."""
    from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier, StackingClassifier, VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    check_component("ensemble kind", kind, ENSEMBLE_KINDS, spec_id)
    options = dict(options)
    seed = int(options.get("seed", 7))
    started = time.perf_counter()
    train_x, train_y = data.features["train"], data.labels["train"]
    out_of_fold: np.ndarray | None = None
    if kind == "soft_voting":
        names = list(options.get("members", MEMBER_NAMES))
        weights = options.get("weights")
        model = VotingClassifier(_frozen(members, names, spec_id), voting="soft", weights=weights).fit(train_x, train_y)
        fitted_on = "nothing (members frozen)"
    elif kind == "bagging":
        base = _base_learner(options.get("estimator", "decision_tree"), options, seed, spec_id)
        model = BaggingClassifier(base, n_estimators=int(options.get("n_estimators", 40)),
                                  max_samples=float(options.get("max_samples", 1.0)), random_state=seed, n_jobs=1)
        model.fit(train_x, train_y)
        fitted_on = "train"
    elif kind == "boosting":
        base = _base_learner(options.get("estimator", "decision_tree"), {"max_depth": 1, **options}, seed, spec_id)
        model = AdaBoostClassifier(base, n_estimators=int(options.get("n_estimators", 80)),
                                   learning_rate=float(options.get("learning_rate", 0.5)), random_state=seed)
        model.fit(train_x, train_y)
        fitted_on = "train"
    else:
        check_component("stacking meta-learner", options.get("final_estimator", "logistic_regression"), META_LEARNERS,
                        spec_id)
        val_x, val_y = data.features["validation"], data.labels["validation"]
        folds = min(int(options.get("cv", 5)), int(np.bincount(val_y, minlength=2).min()))
        if folds < 2:
            raise ValueError(f"spec {spec_id}: stacking needs at least 2 positives and 2 negatives in the validation "
                             f"split to fit its meta-learner; it has {np.bincount(val_y, minlength=2).tolist()}")
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        names = list(options.get("members", MEMBER_NAMES))
        model = StackingClassifier(_frozen(members, names, spec_id),
                                   final_estimator=LogisticRegression(C=float(options.get("C", 1.0)), max_iter=1000),
                                   cv=splitter, stack_method="predict_proba")
        out_of_fold = cross_val_predict(model, val_x, val_y, cv=splitter, method="predict_proba")[:, 1]
        model.fit(val_x, val_y)
        fitted_on = f"validation (meta-learner; validation metrics out-of-fold, {folds} folds)"
    probabilities = {split: (model.predict_proba(data.features[split])[:, 1].astype(np.float64)
                             if len(data.labels[split]) else np.empty(0)) for split in SPLITS}
    if out_of_fold is not None:
        probabilities["validation"] = out_of_fold.astype(np.float64)
    return EnsembleFit(kind, model, probabilities, fitted_on, options, time.perf_counter() - started)


def member_probabilities(members: Mapping[str, Any], data: ZooData) -> dict[str, dict[str, np.ndarray]]:
    return {name: {split: (member.predict_proba(data.features[split])[:, 1].astype(np.float64)
                           if len(data.labels[split]) else np.empty(0)) for split in SPLITS}
            for name, member in members.items()}


def comparison_table(labels: Mapping[str, np.ndarray], scored: Mapping[str, Mapping[str, np.ndarray]],
                     roles: Mapping[str, str], threshold: float = 0.5) -> pd.DataFrame:
    """One row per model (member or ensemble), a column per split and metric (``val_roc_auc``, ``test_f1``...)."""
    prefix = {"validation": "val", "test": "test"}
    rows = []
    for name, probabilities in scored.items():
        row: dict[str, Any] = {"model": name, "role": roles[name]}
        for split in COMPARED_SPLITS:
            metrics = classification_metrics(labels[split], probabilities[split], threshold)
            row.update({f"{prefix[split]}_{metric}": metrics[metric] for metric in REPORTED_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class EnsembleComparison:
    """Every ensemble and member scored on validation and test with the same metrics, at one threshold."""

    table: pd.DataFrame
    ensembles: dict[str, EnsembleFit]
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why it could not be fitted

    def metrics_of(self, model: str) -> dict[str, float]:
        row = self.table.set_index("model").loc[model]
        return {key: float(value) for key, value in row.items() if key != "role" and pd.notna(value)}

    def best_on_validation(self, metric: str = "val_roc_auc") -> str:
        return str(self.table.sort_values(metric, ascending=False, na_position="last").iloc[0]["model"])

    def as_metadata(self) -> dict[str, Any]:
        records = self.table.round(4).astype(object).where(self.table.notna(), None).to_dict(orient="records")
        return {"comparison": records, "ensemble_kinds": sorted(self.ensembles), "skipped_kinds": dict(self.skipped),
                "best_on_validation_roc_auc": self.best_on_validation()}


def compare_ensembles(members: Mapping[str, Any], data: ZooData, zoo: ZooConfig) -> EnsembleComparison:
    """Fit every ensemble kind the zoo configuration lists and score it beside each member.

    A kind that cannot be fitted on this data (stacking on a validation split
    with fewer than two cases of a class) is skipped with its reason, not fatal;
    an unknown kind or member is an error naming the spec.
    """
    settings = zoo.ensembles
    threshold = float(settings.get("threshold", 0.5))
    kinds = list(settings.get("kinds", ENSEMBLE_KINDS))
    for kind in kinds:
        check_component("ensemble kind", kind, ENSEMBLE_KINDS, zoo.spec_id)
    fits: dict[str, EnsembleFit] = {}
    skipped: dict[str, str] = {}
    for kind in kinds:
        try:
            fits[kind] = fit_ensemble(kind, members, data, settings.get(kind) or {}, spec_id=zoo.spec_id)
        except ValueError as unfit:
            if kind != "stacking" or "needs at least" not in str(unfit):
                raise
            skipped[kind] = str(unfit)
    scored = {**member_probabilities(members, data), **{kind: fit.probabilities for kind, fit in fits.items()}}
    roles = {**{name: "member" for name in members}, **{kind: "ensemble" for kind in fits}}
    return EnsembleComparison(comparison_table(data.labels, scored, roles, threshold), fits, skipped)


def load_members(member_dirs: Mapping[str, Path], preprocessing: FittedPreprocessing, *, spec_id: str = "") -> dict[str, Any]:
    """The trained members from their model directories; each must have been trained on ``preprocessing``."""
    from medllm_pipelines.lib.train.predictor import TabularPredictor

    members: dict[str, Any] = {}
    expected = preprocessing.fingerprint()
    for name, folder in member_dirs.items():
        check_component("ensemble member", name, MEMBER_NAMES, spec_id)
        if name == MLP:
            predictor = TabularPredictor.load(folder)
            fingerprint = predictor.spec.get("preprocessing_fingerprint")
            members[name] = NetworkClassifier(predictor.network)
        else:
            members[name], description = load_model_dir(folder)
            fingerprint = description.get("preprocessing_fingerprint")
        if fingerprint != expected:
            raise ValueError(f"spec {spec_id}: member {name} in {folder} was trained on another preprocessing "
                             "than this dataset version's: materialise it again")
    return members


@dataclass(frozen=True)
class EnsembleTraining:
    """The ensembles of a spec, compared with their members, logged to one MLflow run and registered."""

    spec_id: str
    dataset_version: str
    comparison: EnsembleComparison
    run_id: str
    model_uris: dict[str, str]
    registered: dict[str, Any]
    zoo: ZooConfig

    def summary(self) -> str:
        return f"{self.spec_id} ensembles: best on validation ROC-AUC is {self.comparison.best_on_validation()}"

    def as_metadata(self) -> dict[str, Any]:
        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uris": dict(self.model_uris),
            "registered_models": {kind: reg.as_metadata() for kind, reg in self.registered.items()},
            **self.comparison.as_metadata(),
            **self.zoo.as_metadata(),
        }


def train_ensembles(
    dataset: SplitDataset,
    preprocessing: FittedPreprocessing,
    zoo: ZooConfig,
    member_dirs: Mapping[str, Path],
    *,
    tags: dict[str, str] | None = None,
) -> EnsembleTraining:
    """Compare every ensemble with each member inside the active MLflow run; log and register each ensemble.

    Any error tags the run with ``failure_reason`` and is raised again (the run ends FAILED, nothing registered).
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.gbm import register_variant
    from medllm_pipelines.lib.train.tracking import (
        DATASET_VERSION_TAG,
        mark_failed,
        pinned_pip_requirements,
    )

    try:
        data = ZooData.from_frame(dataset.frame, preprocessing, dataset_version=dataset.version, spec_id=zoo.spec_id)
        members = load_members(member_dirs, preprocessing, spec_id=zoo.spec_id)
        comparison = compare_ensembles(members, data, zoo)
        mlflow.set_tags({DATASET_VERSION_TAG: dataset.version, "model_family": "ensemble", **(tags or {})})
        mlflow.log_params({"ensemble_kinds": ",".join(comparison.ensembles), "members": ",".join(members),
                           "dataset_version": dataset.version, "threshold": zoo.ensembles.get("threshold", 0.5),
                           "zoo_config_version": zoo.version, "zoo_config_size": zoo.size,
                           **{f"{kind}.fitted_on": fit.fitted_on for kind, fit in comparison.ensembles.items()},
                           **{f"skipped.{kind}": reason[:400] for kind, reason in comparison.skipped.items()}},
                          synchronous=True)
        log_dataset_inputs(dataset, preprocessing, name=zoo.spec_id)
        mlflow.log_table(comparison.table, artifact_file=COMPARISON_ARTIFACT)
        flat = {f"{row['model']}.{column}": float(row[column]) for row in comparison.table.to_dict(orient="records")
                for column in comparison.table.columns if column not in ("model", "role") and pd.notna(row[column])}
        mlflow.log_metrics(flat, synchronous=True)
        example = data.input_example()
        requirements = pinned_pip_requirements(ENSEMBLE_PACKAGES)
        model_uris: dict[str, str] = {}
        registered: dict[str, Any] = {}
        for kind, fit in comparison.ensembles.items():
            info = mlflow.sklearn.log_model(
                fit.model, name=f"ensemble_{kind}", signature=infer_signature(example, fit.model.predict_proba(example)),
                input_example=example, pip_requirements=requirements, serialization_format="cloudpickle",
                pyfunc_predict_fn="predict_proba", params={"kind": kind, "fitted_on": fit.fitted_on},
            )
            model_uris[kind] = info.model_uri
            registered[kind] = register_variant(info.model_uri, zoo.spec_id, "ensemble", dataset.version,
                                                comparison.metrics_of(kind), variant=kind)
    except Exception as error:
        mark_failed(f"{type(error).__name__}: {error}")
        raise
    return EnsembleTraining(zoo.spec_id, dataset.version, comparison, mlflow.active_run().info.run_id, model_uris,
                            registered, zoo)
