"""Distilling the triage Transformer encoder into a smaller one (issue 11 item 5, row M8).

The student is a ``TransformerEncoderClassifier`` of the shape declared in the ``triage`` block of
``lib/train/configs/compression.yaml`` (fewer, narrower layers); vocabulary, classes and
``max_length`` stay the teacher's, so the student reads the same token ids with the same tokenizer.
It is trained by the generic ``DistillationSystem`` (Hinton: ``alpha * T^2 * KL + (1 - alpha) * CE``)
on the train split, the best validation-loss checkpoint kept (early stopping), and both models are
judged on the evaluation split: accuracy, macro-F1 and top-3 accuracy overall and per language,
parameters, weight bytes and single-thread CPU latency of the network on token ids (tokenisation is
the same for both and left out, as the other reports time the network on prepared inputs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from medllm_pipelines.lib.train.compression import CompressionConfig
from medllm_pipelines.lib.train.compression_metrics import (
    GroupedMetrics,
    Runner,
    measure_latency,
    parameter_count,
    state_dict_bytes,
)
from medllm_pipelines.lib.train.distillation import (
    STUDENT_DIRNAME,
    DistillationConfig,
    DistillationReport,
    DistilledStudent,
    EpochHook,
    distil,
)
from medllm_pipelines.lib.train.text.data import TextClassificationDataModule, class_indices, encode_texts
from medllm_pipelines.lib.train.text.networks import EncoderConfig, TransformerEncoderClassifier, count_parameters
from medllm_pipelines.lib.train.text.predictor import (
    MODEL_SPEC_FILENAME,
    TextClassifierPredictor,
    sha256_file,
)
from medllm_pipelines.lib.train.text.systems import classification_metrics
from medllm_pipelines.lib.train.text.tokenizer import TOKENIZER_FILE, check_tokenizer_matches

TEXT_SCORE_METRICS = ("accuracy", "macro_f1", "top3_accuracy")
STUDENT_KEYS = ("d_model", "n_heads", "n_layers", "dim_feedforward", "dropout")  # the rest is the teacher's
SUBGROUP_COLUMNS = ("language",)


def student_encoder(teacher: EncoderConfig, student: Mapping[str, Any], spec_id: str = "") -> EncoderConfig:
    """The teacher's encoder config with the student block's shape; vocabulary, classes and length kept."""
    unknown = sorted(set(student) - set(STUDENT_KEYS))
    if unknown:
        raise ValueError(f"spec {spec_id or '?'}: unknown student keys {unknown}; a text student sets only "
                         f"{list(STUDENT_KEYS)} (vocabulary, classes and max_length are the teacher's)")
    try:
        return dataclasses.replace(teacher, **student)
    except ValueError as invalid:
        raise ValueError(f"spec {spec_id or '?'}: student: {invalid}") from None


def text_grouped_metrics(logits: np.ndarray, labels: np.ndarray, groups: pd.DataFrame | None, *,
                         min_rows: int = 10) -> GroupedMetrics:
    """Accuracy, macro-F1 and top-3 accuracy overall and per subgroup value (n only under ``min_rows``)."""
    subgroups: dict[str, dict[str, dict[str, Any]]] = {}
    for column in ([] if groups is None else groups.columns):
        values = groups[column].astype(str).to_numpy()
        subgroups[column] = {}
        for value in sorted(set(values)):
            mask = values == value
            entry: dict[str, Any] = {"n": int(mask.sum())}
            if mask.sum() >= min_rows:
                entry.update(classification_metrics(logits[mask], labels[mask]))
            subgroups[column][value] = entry
    return GroupedMetrics(classification_metrics(logits, labels), int(len(labels)), subgroups)


def token_id_runner(network: torch.nn.Module) -> Runner:
    """int64 token ids (batch, length) -> logits: what ``measure_latency`` times (torch_runner casts to float32)."""
    network = network.eval()

    def run(input_ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))).numpy()

    return run


def _write_student_dir(teacher: TextClassifierPredictor, teacher_dir: Path, student_dir: Path,
                       student: TransformerEncoderClassifier, distilled: DistilledStudent, config: DistillationConfig,
                       test_metrics: Mapping[str, float]) -> None:
    """The student in the teacher's folder layout (same tokenizer and classes): TextClassifierPredictor.load reads it."""
    if student_dir.exists():
        shutil.rmtree(student_dir)
    student_dir.mkdir(parents=True)
    spec = json.loads(json.dumps(teacher.spec))
    weights = student_dir / spec["files"]["network_weights"]
    torch.save(student.state_dict(), weights)
    (student_dir / spec["files"].get("tokenizer", TOKENIZER_FILE)).write_text(teacher.tokenizer.to_str(pretty=False))
    for stale in ("val_metrics", "train_config"):  # the teacher's, not the student's
        spec.pop(stale, None)
    spec.update(network=student.config.as_dict(), parameters=count_parameters(student), best_epoch=distilled.best_epoch,
                epochs_run=distilled.epochs_run, test_metrics={f"test_{k}": v for k, v in test_metrics.items()},
                distillation={**asdict(config), "teacher_model_dir": str(teacher_dir)})
    spec["sha256"]["network_weights"] = sha256_file(weights)
    (student_dir / MODEL_SPEC_FILENAME).write_text(json.dumps(spec, indent=2, sort_keys=True, default=list) + "\n")


def distil_text(teacher_dir: str | Path, frame: pd.DataFrame, tokenizer: Any | None, compression: CompressionConfig,
                output_dir: str | Path, *, on_epoch_metrics: EpochHook | None = None, text_column: str = "text",
                label_column: str = "label", split_column: str = "split") -> DistillationReport:
    """Distil the trained text classifier in ``teacher_dir`` into the configured smaller encoder.

    ``frame`` holds the split texts (text, label, split; language when known); ``tokenizer`` must be the
    one the teacher was trained with (None: the copy in the teacher's folder); a different one is
    refused (TokenizerMismatchError naming the spec). Both models are judged on the evaluation split.
    """
    config = DistillationConfig.from_compression(compression)
    spec_id = compression.spec_id
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    teacher = TextClassifierPredictor.load(teacher_dir)
    if tokenizer is None:
        tokenizer = teacher.tokenizer
    check_tokenizer_matches(tokenizer, teacher.network.vocab_size, spec_id=spec_id,
                            expected_sha256=teacher.spec["sha256"].get("tokenizer"), where=str(teacher_dir))
    classes, encoder = teacher.classes, teacher.network.config
    evaluated = frame[frame[split_column] == compression.evaluation_split]
    if evaluated.empty:
        raise ValueError(f"spec {spec_id}: no rows in the {compression.evaluation_split!r} split to judge the student on")
    network = student_encoder(encoder, config.student, spec_id)
    data = TextClassificationDataModule(frame, tokenizer, classes, text_column=text_column, label_column=label_column,
                                        split_column=split_column, max_length=encoder.max_length,
                                        batch_size=config.batch_size, seed=config.seed)
    data.setup("fit")
    L.seed_everything(config.seed, workers=True, verbose=False)
    student = TransformerEncoderClassifier(network)
    distilled = distil(student, teacher.network, data, config, output_dir, on_epoch_metrics=on_epoch_metrics,
                       spec_id=spec_id, validation_metrics=classification_metrics)

    ids = encode_texts(tokenizer, evaluated[text_column].tolist(), encoder.max_length).numpy()
    labels = class_indices(evaluated[label_column].tolist(), classes, compression.evaluation_split).numpy()
    columns = [c for c in SUBGROUP_COLUMNS if c in compression.subgroup_columns and c in evaluated.columns]
    groups = evaluated[columns].fillna("unknown").astype(str) if columns else None
    timing = {"calls": compression.latency_calls, "batch_size": compression.latency_batch_size}
    measured = {}
    for role, module in (("teacher", teacher.network), ("student", distilled.student)):
        run = token_id_runner(module)
        logits = np.concatenate([run(ids[i:i + 256]) for i in range(0, len(ids), 256)])
        measured[role] = (text_grouped_metrics(logits, labels, groups, min_rows=compression.subgroup_min_rows),
                          parameter_count(module), state_dict_bytes(module), measure_latency(run, ids, **timing))
    student_dir = output_dir / STUDENT_DIRNAME
    _write_student_dir(teacher, teacher_dir, student_dir, distilled.student, distilled, config,
                       measured["student"][0].overall)
    (t_metrics, t_params, t_bytes, t_latency), (s_metrics, s_params, s_bytes, s_latency) = measured["teacher"], measured["student"]
    return DistillationReport(spec_id, t_metrics, s_metrics, t_params, s_params, t_bytes, s_bytes, t_latency, s_latency,
                              config.tolerance_points, config.gate_metrics, distilled.best_epoch, distilled.epochs_run,
                              distilled.train_seconds, student_dir, config, score_metrics=TEXT_SCORE_METRICS,
                              table_metrics=TEXT_SCORE_METRICS)


def log_text_student(report: DistillationReport) -> str:
    """The student as the triage model's pyfunc (texts in, department and probabilities out); for
    ``log_distillation``. The input example is written text (runs.INPUT_EXAMPLE), never a patient's words."""
    from medllm_pipelines.lib.train.text.runs import log_text_classifier

    return log_text_classifier(report.student_dir, STUDENT_DIRNAME)
