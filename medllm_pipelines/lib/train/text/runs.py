"""One training of the triage spec inside an active MLflow run: what train/triage_model calls.

The asset reads the dataset and the tokenizer and opens the MLflow run;
everything between is here: the split frames as MLflow inputs, params,
per-epoch curves, the training summary, the held-out figures (test split,
majority-class baseline, hand-written dialogues), the model logged as a
pyfunc (texts in, department and probabilities out) with a signature and an
input example, and the registration under the spec id with alias
``challenger``. Any failure tags the run ``failure_reason`` and re-raises,
so that the run ends FAILED and nothing is registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.train.registry import RegisteredModel
from medllm_pipelines.lib.train.text.networks import TRANSFORMER_ENCODER
from medllm_pipelines.lib.train.text.training import TextTrainConfig, TextTrainResult, train_text_classifier

HELDOUT_FILE = Path(__file__).with_name("heldout_triage.yaml")
MODEL_ARTIFACT_NAME = "model"
TRAINING_SUMMARY_ARTIFACT = "training_summary.json"
# Written for the signature, never a patient's words: an input example is stored in the artifact store in clear.
INPUT_EXAMPLE = "I have had a cough and a fever for three days."


def text_training_config(spec: ModelSpec, size: str = "demo") -> TextTrainConfig:
    """The spec's encoder config at ``size``; call it before opening the MLflow run (bad specs fail here)."""
    return TextTrainConfig.from_spec(spec.id, spec.network_for(size), spec.training_for(size))


def spec_classes(spec: ModelSpec) -> list[str]:
    classes = list(spec.target.get("classes") or [])
    if len(classes) < 2:
        raise ValueError(f"spec {spec.id}: target.classes must list at least two classes")
    return classes


@cache
def load_written_dialogues(path: Path = HELDOUT_FILE) -> pd.DataFrame:
    """The hand-written held-out messages (label, language, text) and the file's version in ``attrs``."""
    raw = yaml.safe_load(Path(path).read_text())
    frame = pd.DataFrame(raw["dialogues"])
    frame.attrs["version"] = str(raw.get("version", ""))
    return frame


def written_dialogue_metrics(predictor: Any, written: pd.DataFrame) -> dict[str, float]:
    """Accuracy and top-3 accuracy on the hand-written messages, overall, per language and per set."""
    if written.empty:
        return {}
    top = predictor.top_k(written["text"].tolist(), k=3)
    first = pd.Series([row[0][0] == label for row, label in zip(top, written["label"], strict=True)], index=written.index)
    top3 = pd.Series([label in [c for c, _ in row] for row, label in zip(top, written["label"], strict=True)],
                     index=written.index)
    metrics = {"heldout_written_accuracy": float(first.mean()), "heldout_written_top3_accuracy": float(top3.mean())}
    for language, correct in first.groupby(written["language"]):
        metrics[f"heldout_written_accuracy_{language}"] = float(correct.mean())
    sets = written["set"].fillna("v1") if "set" in written.columns else pd.Series("v1", index=written.index)
    for name, correct in first.groupby(sets):  # v1: the first session's; v2: written before generator 2
        metrics[f"heldout_written_accuracy_{name}"] = float(correct.mean())
    return metrics


@dataclass(frozen=True)
class TextSpecTraining:
    """A trained text model of a spec: where it is, how it did, its MLflow run and registry entry."""

    spec: ModelSpec
    dataset_version: str
    config: TextTrainConfig
    result: TextTrainResult
    run_id: str
    model_uri: str
    heldout: dict[str, float]
    tokenizer_sha256: str
    registered: RegisteredModel | None = None
    size: str = "demo"

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        return {
            "mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
            "dataset_version": self.dataset_version, "model_dir": str(self.result.model_dir),
            "tokenizer_sha256": self.tokenizer_sha256, "dagster_run_id": dagster_run_id,
            **({"registered_model": self.registered.name, "registered_version": self.registered.version}
               if self.registered else {}),
        }

    def summary(self) -> str:
        r = self.result
        return (f"trained {self.spec.id}: best epoch {r.best_epoch} of {r.epochs_run} in {r.train_seconds:.1f} s, "
                f"test accuracy {r.test_metrics.get('test_accuracy', float('nan')):.3f} (majority class "
                f"{r.baseline_metrics.get('baseline_test_accuracy', float('nan')):.3f}), hand-written "
                f"{self.heldout.get('heldout_written_accuracy', float('nan')):.3f}")

    def as_metadata(self) -> dict[str, Any]:
        r = self.result
        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri,
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "stopped_early": r.stopped_early,
            "train_seconds": round(r.train_seconds, 2),
            "n_train": r.n_train,
            "n_validation": r.n_val,
            "n_test": r.n_test,
            "parameters": r.parameters,
            "validation_metrics": {k: round(v, 4) for k, v in r.val_metrics.items()},
            "test_metrics": {k: round(v, 4) for k, v in r.test_metrics.items()},
            "baseline": self.spec.baseline,
            "baseline_metrics": {k: round(v, 4) for k, v in r.baseline_metrics.items()},
            "test_accuracy_by_language": {k: round(v, 4) for k, v in r.test_accuracy_by_language.items()},
            "test_confusion": r.confusion,
            "heldout_written_metrics": {k: round(v, 4) for k, v in self.heldout.items()},
            "tokenizer_sha256": self.tokenizer_sha256,
            "training_config": self.config.to_dict(),
            "training_size": self.size,
            **(self.registered.as_metadata() if self.registered else {}),
        }


def log_text_classifier(model_dir: Path, name: str = MODEL_ARTIFACT_NAME) -> str:
    """A text classifier's folder as an MLflow pyfunc (texts in, department and probabilities out) with a signature
    and the written input example; returns its model URI. Used for the triage model and its distilled student."""
    import mlflow
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
    from medllm_pipelines.lib.train.text.pyfunc import TextClassifierModel
    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements

    example = pd.DataFrame({"text": [INPUT_EXAMPLE]})
    output = TextClassifierModel.predictions(TextClassifierPredictor.load(model_dir), example)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=TextClassifierModel(),
        artifacts={"model_dir": str(model_dir)},
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=[*pinned_pip_requirements(("torch", "tokenizers", "numpy", "pandas")), "mlflow"],
    )
    return info.model_uri


def train_text_spec_model(
    dataset: SplitDataset,
    tokenizer: Any,
    spec: ModelSpec,
    output_dir: Path,
    run_id: str,
    *,
    config: TextTrainConfig | None = None,
    size: str = "demo",
    register: bool = True,
) -> TextSpecTraining:
    """Train ``spec``'s encoder on ``dataset`` (columns text, label, language, split) in the active run ``run_id``."""
    import mlflow

    from medllm_pipelines.lib.train.registry import register_model
    from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
    from medllm_pipelines.lib.train.text.tokenizer import tokenizer_sha256
    from medllm_pipelines.lib.train.tracking import (
        log_dataset_input,
        log_training_summary,
        make_mlflow_epoch_logger,
        mark_failed,
    )

    config = config or text_training_config(spec, size)
    try:
        classes = spec_classes(spec)
        for split, context in (("train", "training"), ("validation", "validation"), ("test", "testing")):
            log_dataset_input(dataset.split(split)[["text", "label", "language"]].reset_index(drop=True),
                              name=f"{spec.id}-{split}", dataset_version=dataset.version, context=context,
                              targets="label")
        sha = tokenizer_sha256(tokenizer)
        mlflow.log_params({**{k: str(v) for k, v in config.to_dict().items()}, "training_size": size,
                           "dataset_version": dataset.version, "network_family": TRANSFORMER_ENCODER,
                           "tokenizer_sha256": sha, "vocab_size": tokenizer.get_vocab_size(),
                           "classes": ",".join(classes), **{f"n_{k}": v for k, v in dataset.rows_per_split.items()}},
                          synchronous=True)
        mlflow.set_tags({"dataset_version": dataset.version, "model_family": TRANSFORMER_ENCODER})
        result = train_text_classifier(dataset.frame, tokenizer, classes, config, output_dir,
                                       on_epoch_metrics=make_mlflow_epoch_logger(run_id), spec_id=spec.id,
                                       dataset_version=dataset.version)
        log_training_summary(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                             stopped_early=result.stopped_early, train_seconds=result.train_seconds,
                             kept_metrics=result.val_metrics)
        mlflow.log_param("parameters", result.parameters)
        written = load_written_dialogues()
        heldout = written_dialogue_metrics(TextClassifierPredictor.load(result.model_dir), written)
        mlflow.log_params({"heldout_written_version": written.attrs.get("version", ""),
                           "heldout_written_dialogues": len(written)})
        mlflow.log_metrics({**result.test_metrics, **result.baseline_metrics, **heldout}, synchronous=True)
        model_uri = log_text_classifier(result.model_dir)
        mlflow.log_dict(result.to_dict(), TRAINING_SUMMARY_ARTIFACT)
        registered = None
        if register:
            registered = register_model(model_uri, spec.id, family=TRANSFORMER_ENCODER, dataset_version=dataset.version,
                                        metrics={**result.test_metrics, **result.val_metrics, **heldout},
                                        tracking_uri=mlflow.get_tracking_uri())
    except Exception as failure:
        mark_failed(f"{type(failure).__name__}: {failure}")
        raise
    return TextSpecTraining(spec, dataset.version, config, result, run_id, model_uri, heldout, sha, registered, size)
