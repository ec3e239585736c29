"""The deterioration LSTM/GRU compressed (issue 11 item 4, row M7): int8 dynamic quantisation of its recurrent and
Linear layers and an ONNX export run with onnxruntime, judged as the MLP and the CNN are (lib/train/compression.py):
file size, single-thread CPU latency p50/p95, test ROC-AUC before and after, overall and per sex, age band and
institution, and the tolerance of ``configs/compression.yaml``.

The evaluation windows are rebuilt from the de-identified vitals with the scaler the trained model saved (fitted on
its training stays), so the variants see exactly what the fp32 network saw. Institution is a column of the windows;
sex and age band come from the de-identified patients table (one row per person; ages kept as bands).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medllm_pipelines.lib.train.compression import (
    CompressionConfig,
    CompressionSuite,
    EvaluationData,
    compress_model,
    with_person_attributes,
)
from medllm_pipelines.lib.train.compression_metrics import subgroup_frame


def sequence_evaluation_data(model_dir: str | Path, vitals: pd.DataFrame, windows: pd.DataFrame,
                             config: CompressionConfig, patients: pd.DataFrame | None = None) -> EvaluationData:
    """The evaluation split's windows as (n, window_hours, channels) inputs, labels and subgroups; the training
    split's windows are the calibration inputs (unused by dynamic int8, kept for symmetry)."""
    from medllm_pipelines.lib.curate.sequences import STAY_KEYS
    from medllm_pipelines.lib.train.sequence.data import VitalsScaler, window_tensor

    description = json.loads((Path(model_dir) / "model_spec.json").read_text())
    if description.get("task") != "deterioration_early_warning":
        raise ValueError(f"spec {config.spec_id}: only the deterioration classifier is compressed, "
                         f"not a {description.get('task')!r} model")
    scaler = VitalsScaler(**{k: tuple(v) for k, v in description["scaler"].items()})
    hours = int(description["window_hours"])
    rows = windows[windows["split"] == config.evaluation_split]
    if len(rows) == 0:
        raise ValueError(f"spec {config.spec_id}: no windows in the {config.evaluation_split!r} split to compare "
                         "variants on")
    stays = vitals.merge(windows[STAY_KEYS].drop_duplicates(), on=STAY_KEYS)
    train = windows[windows["split"] == "train"]
    return EvaluationData(
        inputs=window_tensor(stays, rows, scaler, hours).numpy(),
        labels=rows["label"].to_numpy().astype(np.int64),
        groups=subgroup_frame(with_person_attributes(rows, patients), config.subgroup_columns, config.age_band_edges),
        threshold=0.5,
        calibration=window_tensor(stays, train.head(256), scaler, hours).numpy() if len(train) else None,
    )


def compress_sequence_model(model_dir: str | Path, vitals: pd.DataFrame, windows: pd.DataFrame,
                            config: CompressionConfig, out_dir: str | Path,
                            patients: pd.DataFrame | None = None) -> CompressionSuite:
    """Compress the trained deterioration network in ``model_dir`` and judge it on ``windows``' evaluation split
    (curate/deterioration_dataset rows with ``split``), overall and per sex, age band and institution."""
    from medllm_pipelines.lib.train.sequence.runs import load_network

    data = sequence_evaluation_data(model_dir, vitals, windows, config, patients)
    return compress_model(load_network(Path(model_dir)), data, config, out_dir)


__all__ = ["compress_sequence_model", "sequence_evaluation_data"]
