"""fp32 vs int8 vs ONNX on the CPU (issue 11 target: >= 2x faster, <= 1 point of metric lost), single thread.

Two models, each trained here, then compressed through lib/train/compression.compress_model exactly as
the train stage does:
- the t2d_risk MLP (the spec's training block: 6 selected inputs, hidden 32-16) on real clinical data that
  ships with scikit-learn (WDBC, 569 patients), scored one row per call as the serving endpoint does;
- a lesion-classifier-size CNN (MONAI ResNet-18, 2D, 1 x 64 x 64, two classes) trained for a few epochs on
  synthetic lesion/no-lesion images, scored one image per call.

    .venv/bin/python benchmarks/bench_compression.py           # writes benchmarks/results/compression.json
    .venv/bin/python benchmarks/bench_compression.py --quick   # fewer calls and images, nothing written
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def _rows(suite) -> dict:
    out = {"fp32": {"p50_ms": suite.baseline_latency.p50_ms, "p95_ms": suite.baseline_latency.p95_ms,
                    "file_bytes": suite.baseline_file_bytes, **{k: suite.baseline_metrics.overall.get(k)
                                                                for k in ("roc_auc", "accuracy")}}}
    for report in suite.reports:
        out[report.variant] = {"p50_ms": report.latency.p50_ms, "p95_ms": report.latency.p95_ms,
                               "file_bytes": report.file_bytes, "speedup_p50": report.speedup_p50,
                               **{k: report.metrics_after.overall.get(k) for k in ("roc_auc", "accuracy")},
                               "points_lost": {k: report.drop_points[k] for k in ("roc_auc", "accuracy")},
                               "within_tolerance": report.within_tolerance,
                               "meets_target": report.within_tolerance and report.speedup_p50 >= 2.0}
    return out


def bench_mlp(calls: int, work: Path) -> dict:
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    from medllm_pipelines.lib.curate.preprocessing import PreprocessingSpec, fit_preprocessing
    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.train.compression import EvaluationData, compress_model, load_compression_config
    from medllm_pipelines.lib.train.predictor import TabularPredictor
    from medllm_pipelines.lib.train.tabular import TrainConfig, train_tabular_classifier

    data = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(0)
    frame = data.data.copy()
    frame.columns = [str(c) for c in frame.columns]
    numeric = list(frame.columns)
    frame["sex"] = rng.choice(["female", "male"], size=len(frame))
    frame["patient_pseudonym"] = [f"P{i:05d}" for i in range(len(frame))]
    frame["label"] = (data.target == 0).astype(int).to_numpy()
    frame["split"] = rng.choice(["train", "validation", "test"], size=len(frame), p=[0.7, 0.15, 0.15])
    spec = load_spec("t2d_risk")
    declaration = PreprocessingSpec(numeric_columns=tuple(numeric), categorical_columns=("sex",), selection="univariate",
                                    select_k=6)
    preprocessing = fit_preprocessing(frame, declaration, label="label", split_column="split")
    started = time.perf_counter()
    result = train_tabular_classifier(frame, preprocessing, "label", TrainConfig.from_dict(spec.training), work / "mlp")
    train_seconds = time.perf_counter() - started
    predictor = TabularPredictor.load(result.model_dir)
    test = frame[frame["split"] == "test"]
    config = load_compression_config("t2d_risk")
    config = dataclasses.replace(config, latency_calls=calls)
    evaluation = EvaluationData(predictor.preprocessing.transform_array(test), test["label"].to_numpy(),
                                pd.DataFrame({"sex": test["sex"].to_numpy()}), predictor.threshold)
    suite = compress_model(predictor.network, evaluation, config, work / "mlp_variants")
    return {"model": "t2d_risk MLP (inputs 6, hidden 32-16), WDBC", "n_test": int(len(test)), "batch_size": 1,
            "train_seconds": round(train_seconds, 1), "variants": _rows(suite)}


def lesion_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy textured slices; half hold a bright disc of random size and place (the lesion)."""
    images = rng.normal(0.0, 1.0, size=(n, 1, size, size)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        cy, cx, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(3, 8)
        images[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 2.5
    return images, labels


def bench_cnn(calls: int, n_train: int, epochs: int, work: Path) -> dict:
    import torch
    from monai.networks.nets import resnet18

    from medllm_pipelines.lib.train.compression import EvaluationData, compress_model, load_compression_config

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    size = 64
    train_x, train_y = lesion_images(n_train, size, rng)
    test_x, test_y = lesion_images(128, size, rng)
    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n_train)
        for start in range(0, n_train, 32):
            batch = order[start:start + 32]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(train_x[batch])), torch.from_numpy(train_y[batch]))
            loss.backward()
            optimiser.step()
    train_seconds = time.perf_counter() - started
    model.eval()
    config = load_compression_config("lesion_classifier")
    config = dataclasses.replace(config, latency_calls=calls)
    suite = compress_model(model, EvaluationData(test_x, test_y, None, calibration=train_x[:128]), config, work / "cnn")
    return {"model": "MONAI ResNet-18 2D, 1x64x64, 2 classes, synthetic lesions", "n_test": 128, "batch_size": 1,
            "train_images": n_train, "epochs": epochs, "train_seconds": round(train_seconds, 1), "variants": _rows(suite)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import torch

    calls = 100 if args.quick else 500
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        result = {
            "benchmark": "compression",
            "target": ">= 2x faster than fp32 (p50, single thread, CPU) with <= 1 point of metric lost",
            "mlp": bench_mlp(calls, work),
            "cnn": bench_cnn(calls // 5, 128 if args.quick else 384, 2 if args.quick else 4, work),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "threads": 1,
            "quick": args.quick,
        }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "compression.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
