"""One training of the clinical_entities spec inside an active MLflow run: what train/entity_model calls.

Split frames as MLflow inputs, params, per-epoch curves, the training summary,
test and dictionary-baseline span metrics, the model as a pyfunc (texts in,
entity spans out as JSON) with signature and input example, registration as
``clinical_entities`` (family transformer_encoder, alias ``challenger``). Any
failure tags the run ``failure_reason`` and re-raises: FAILED, nothing registered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.train.registry import RegisteredModel
from medllm_pipelines.lib.train.text.entities import INPUT_EXAMPLE, EntityTrainResult, train_entity_tagger
from medllm_pipelines.lib.train.text.networks import TRANSFORMER_ENCODER
from medllm_pipelines.lib.train.text.training import TextTrainConfig

ENTITY_TASK = "token_classification"


def entity_training_config(spec: ModelSpec, size: str = "demo") -> TextTrainConfig:
    """The spec's tagger config at ``size``: unknown network/optimiser/keys refused naming the spec, before any run."""
    if spec.task != ENTITY_TASK:
        raise ValueError(f"spec {spec.id}: task {spec.task!r} is not {ENTITY_TASK!r}")
    entity_types(spec)
    return TextTrainConfig.from_spec(spec.id, spec.network_for(size), spec.training_for(size))


def entity_types(spec: ModelSpec) -> list[str]:
    types = list(spec.target.get("entity_types") or [])
    if not types or any(t in ("PERSON", "PHONE") for t in types):
        raise ValueError(f"spec {spec.id}: target.entity_types must list clinical types, never PERSON/PHONE")
    return types


class EntityTaggerModel(mlflow.pyfunc.PythonModel):
    """A frame with a ``text`` column in; an ``entities`` column (JSON list of start/end/type/text) out."""

    def load_context(self, context: Any) -> None:
        from medllm_pipelines.lib.train.text.entities import EntityTaggerPredictor

        self.predictor = EntityTaggerPredictor.load(context.artifacts["model_dir"])

    @staticmethod
    def predictions(predictor: Any, model_input: pd.DataFrame) -> pd.DataFrame:
        found = predictor.entities(model_input["text"].astype(str).tolist())
        return pd.DataFrame({"entities": [json.dumps(f, ensure_ascii=False) for f in found]})

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictions(self.predictor, model_input)


@dataclass(frozen=True)
class EntitySpecTraining:
    spec: ModelSpec
    dataset_version: str
    config: TextTrainConfig
    result: EntityTrainResult
    run_id: str
    model_uri: str
    registered: RegisteredModel | None = None
    size: str = "demo"

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
                "dataset_version": self.dataset_version, "model_dir": str(self.result.model_dir),
                "dagster_run_id": dagster_run_id,
                **({"registered_model": self.registered.name, "registered_version": self.registered.version}
                   if self.registered else {})}

    def summary(self) -> str:
        r = self.result
        return (f"trained {self.spec.id}: best epoch {r.best_epoch} of {r.epochs_run} in {r.train_seconds:.1f} s, "
                f"test span F1 {r.test_metrics.get('test_span_f1', float('nan')):.3f} (dictionary "
                f"{r.baseline_metrics.get('baseline_test_span_f1', float('nan')):.3f})")

    def as_metadata(self) -> dict[str, Any]:
        r = self.result
        return {
            "trained": True, "dataset_version": self.dataset_version, "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
            "stopped_early": r.stopped_early, "train_seconds": round(r.train_seconds, 2), "n_train": r.n_train,
            "n_validation": r.n_val, "n_test": r.n_test, "parameters": r.parameters,
            "dictionary_entries": r.dictionary_entries,
            "validation_metrics": {k: round(v, 4) for k, v in r.val_metrics.items()},
            "test_metrics": {k: round(v, 4) for k, v in r.test_metrics.items()},
            "baseline": self.spec.baseline,
            "baseline_metrics": {k: round(v, 4) for k, v in r.baseline_metrics.items()},
            "training_config": self.config.to_dict(), "training_size": self.size,
            **(self.registered.as_metadata() if self.registered else {}),
        }


def _log_model(result: EntityTrainResult) -> str:
    import mlflow
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.text.entities import EntityTaggerPredictor
    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements

    example = pd.DataFrame({"text": [INPUT_EXAMPLE]})
    output = EntityTaggerModel.predictions(EntityTaggerPredictor.load(result.model_dir), example)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=EntityTaggerModel(), artifacts={"model_dir": str(result.model_dir)},
        signature=infer_signature(example, output), input_example=example,
        pip_requirements=[*pinned_pip_requirements(("torch", "tokenizers", "numpy", "pandas")), "mlflow"],
    )
    return info.model_uri


def train_entity_spec_model(dataset: SplitDataset, tokenizer: Any, spec: ModelSpec, output_dir: Path, run_id: str, *,
                            config: TextTrainConfig | None = None, size: str = "demo",
                            register: bool = True) -> EntitySpecTraining:
    """Train ``spec``'s tagger on ``dataset`` (text, entities_json, language, split) in the active run ``run_id``."""
    import mlflow

    from medllm_pipelines.lib.train.registry import register_model
    from medllm_pipelines.lib.train.text.tokenizer import tokenizer_sha256
    from medllm_pipelines.lib.train.tracking import log_dataset_input, log_training_summary, make_mlflow_epoch_logger, mark_failed

    config = config or entity_training_config(spec, size)
    try:
        types = entity_types(spec)
        for split, context in (("train", "training"), ("validation", "validation"), ("test", "testing")):
            log_dataset_input(dataset.split(split)[["text", "entities_json", "language"]].reset_index(drop=True),
                              name=f"{spec.id}-{split}", dataset_version=dataset.version, context=context,
                              targets="entities_json")
        mlflow.log_params({**{k: str(v) for k, v in config.to_dict().items()}, "training_size": size,
                           "dataset_version": dataset.version, "network_family": TRANSFORMER_ENCODER,
                           "network_head": "token_tagger", "tokenizer_sha256": tokenizer_sha256(tokenizer),
                           "vocab_size": tokenizer.get_vocab_size(), "entity_types": ",".join(types),
                           **{f"n_{k}": v for k, v in dataset.rows_per_split.items()}}, synchronous=True)
        mlflow.set_tags({"dataset_version": dataset.version, "model_family": TRANSFORMER_ENCODER})
        result = train_entity_tagger(dataset.frame, tokenizer, types, config, output_dir,
                                     on_epoch_metrics=make_mlflow_epoch_logger(run_id), spec_id=spec.id,
                                     dataset_version=dataset.version)
        log_training_summary(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                             stopped_early=result.stopped_early, train_seconds=result.train_seconds,
                             kept_metrics=result.val_metrics)
        mlflow.log_params({"parameters": result.parameters, "dictionary_entries": result.dictionary_entries})
        mlflow.log_metrics({**result.test_metrics, **result.baseline_metrics}, synchronous=True)
        model_uri = _log_model(result)
        mlflow.log_dict(result.to_dict(), "training_summary.json")
        registered = None
        if register:
            registered = register_model(model_uri, spec.id, family=TRANSFORMER_ENCODER, dataset_version=dataset.version,
                                        metrics={**result.test_metrics, **result.val_metrics},
                                        tracking_uri=mlflow.get_tracking_uri())
    except Exception as failure:
        mark_failed(f"{type(failure).__name__}: {failure}")
        raise
    return EntitySpecTraining(spec, dataset.version, config, result, run_id, model_uri, registered, size)
