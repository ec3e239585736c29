from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medllm_pipelines.lib.train.predictor import MODEL_SPEC_FILENAME
from medllm_pipelines.lib.train.tabular import (
    BinaryClassificationSystem,
    TabularMLP,
    TabularPredictor,
    TrainConfig,
    TrainResult,
    train_tabular_classifier,
)
from medllm_pipelines_tests.lib.train.conftest import FAST_CONFIG
from medllm_pipelines_tests.lib.train.datasets import CATEGORICAL_COLUMNS, LABEL_COLUMN, fitted_preprocessing

FrameAndFeatures = tuple[pd.DataFrame, list[str]]


def _split(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[frame["split"] == name]


def test_breast_cancer_model_discriminates_well(trained: TrainResult, cancer_frame: FrameAndFeatures) -> None:
    frame, _ = cancer_frame
    assert trained.val_metrics["val_roc_auc"] > 0.95
    assert trained.n_train == len(_split(frame, "train")) and trained.n_val == len(_split(frame, "validation"))
    # The held-out test split, never seen in training or selection, agrees.
    test = _split(frame, "test")
    test_auc = roc_auc_score(test[LABEL_COLUMN], TabularPredictor.load(trained.model_dir).predict_proba(test))
    assert test_auc > 0.95


def test_history_has_one_entry_per_epoch_and_best_checkpoint_is_kept(trained: TrainResult) -> None:
    assert [int(entry["epoch"]) for entry in trained.history] == list(range(trained.epochs_run))
    assert {"train_loss", "val_loss", "val_roc_auc"} <= set(trained.history[0])
    val_losses = [entry["val_loss"] for entry in trained.history]
    assert trained.best_epoch == int(np.argmin(val_losses))
    assert trained.val_metrics["val_loss"] == pytest.approx(min(val_losses), rel=1e-5)
    assert trained.checkpoint_path.is_file()


def test_model_spec_records_inputs_config_and_versions(trained: TrainResult) -> None:
    spec = json.loads((trained.model_dir / MODEL_SPEC_FILENAME).read_text())
    assert spec["feature_columns"]["categorical"] == CATEGORICAL_COLUMNS
    assert len(spec["feature_columns"]["numeric"]) == 30
    assert spec["train_config"] == FAST_CONFIG.to_dict()
    assert {"torch", "lightning", "scikit-learn"} <= set(spec["versions"])
    assert spec["feature_names_out"] == trained.feature_names_out


@pytest.mark.parametrize("second_run", ["same_frame", "test_rows_scrambled"])
def test_training_is_deterministic_and_blind_to_test_rows(
    trained: TrainResult, cancer_frame: FrameAndFeatures, tmp_path: Path, second_run: str
) -> None:
    frame, features = cancer_frame
    frame = frame.copy()
    if second_run == "test_rows_scrambled":
        test_rows = frame["split"] == "test"
        frame.loc[test_rows, LABEL_COLUMN] = 1 - frame.loc[test_rows, LABEL_COLUMN]
        frame.loc[test_rows, features[:30]] = frame.loc[test_rows, features[:30]] * 3 + 1000
    again = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, FAST_CONFIG, tmp_path)
    assert again.best_epoch == trained.best_epoch and again.epochs_run == trained.epochs_run
    for key, value in trained.val_metrics.items():
        assert again.val_metrics[key] == pytest.approx(value, abs=1e-6)
    first = TabularPredictor.load(trained.model_dir).predict_proba(frame)
    np.testing.assert_allclose(TabularPredictor.load(again.model_dir).predict_proba(frame), first, atol=1e-6)


def test_predictor_in_fresh_process_gives_same_probabilities(
    trained: TrainResult, cancer_frame: FrameAndFeatures, tmp_path: Path
) -> None:
    frame, _ = cancer_frame
    here = TabularPredictor.load(trained.model_dir).predict_proba(frame)
    out = tmp_path / "probabilities.npy"
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from medllm_pipelines.lib.train.predictor import TabularPredictor
        from medllm_pipelines_tests.lib.train.datasets import breast_cancer_frame
        frame, _ = breast_cancer_frame()
        np.save({str(out)!r}, TabularPredictor.load({str(trained.model_dir)!r}).predict_proba(frame))
        print("lightning imported:", "lightning" in sys.modules)
        """
    )
    repository_root = Path(__file__).resolve().parents[3]
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=repository_root
    )
    assert completed.returncode == 0, completed.stderr
    np.testing.assert_allclose(np.load(out), here, rtol=0, atol=1e-7)
    assert "lightning imported: False" in completed.stdout  # serving pays for torch only


def test_predictor_refuses_modified_weights(trained: TrainResult, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in trained.model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    spec = json.loads((copy / MODEL_SPEC_FILENAME).read_text())
    weights = copy / spec["files"]["network_weights"]
    torch.save({key: value + 1 for key, value in torch.load(weights, weights_only=True).items()}, weights)
    with pytest.raises(ValueError, match="SHA-256"):
        TabularPredictor.load(copy)


@pytest.fixture(scope="module")
def noise_frame() -> FrameAndFeatures:
    """Labels independent of the features: validation loss can only plateau or rise."""
    rng = np.random.default_rng(11)
    n = 300
    frame = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"x{i}" for i in range(5)])
    frame["sex"] = rng.choice(["male", "female"], n)
    frame[LABEL_COLUMN] = rng.integers(0, 2, n)
    frame["split"] = rng.choice(["train", "validation"], n, p=[0.7, 0.3])
    frame["patient_pseudonym"] = [f"N{i:04d}" for i in range(n)]
    return frame, [f"x{i}" for i in range(5)] + ["sex"]


def test_early_stopping_stops_on_plateau_and_keeps_best_epoch(noise_frame: FrameAndFeatures, tmp_path: Path) -> None:
    frame, features = noise_frame
    config = TrainConfig(hidden_sizes=(32,), lr=1e-2, max_epochs=200, early_stopping_patience=3, seed=1)
    result = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path)
    assert result.stopped_early and result.epochs_run < 50
    assert result.epochs_run == result.best_epoch + config.early_stopping_patience + 1
    # The saved model is the best epoch's, not the last one's.
    assert result.val_metrics["val_loss"] == pytest.approx(result.history[result.best_epoch]["val_loss"], rel=1e-5)
    assert result.val_metrics["val_loss"] < result.history[-1]["val_loss"]


@pytest.mark.parametrize(
    ("name", "optimizer_class"),
    [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
     ("adagrad", torch.optim.Adagrad), ("sgd", torch.optim.SGD)],
)
def test_optimizer_is_selectable_and_trains(
    name: str, optimizer_class: type, cancer_frame: FrameAndFeatures, tmp_path: Path
) -> None:
    system = BinaryClassificationSystem(TabularMLP(4), optimizer=name, lr=0.02, weight_decay=1e-4)
    optimizer = system.configure_optimizers()
    assert type(optimizer) is optimizer_class
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["weight_decay"] == 1e-4

    frame, features = cancer_frame
    # SGD takes larger steps than the adaptive optimisers to learn as much in 4 epochs.
    config = TrainConfig(hidden_sizes=(16,), optimizer=name, lr=5e-2 if name == "sgd" else 1e-2, max_epochs=4,
                         early_stopping_patience=10)
    seen: list[tuple[int, dict[str, float]]] = []
    result = train_tabular_classifier(
        frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path, lambda m, e: seen.append((e, m))
    )
    assert [epoch for epoch, _ in seen] == [0, 1, 2, 3]
    assert all({"train_loss", "val_loss", "val_roc_auc"} <= set(metrics) for _, metrics in seen)
    # Far below the ~0.66 log loss of predicting the prevalence: the optimiser really learned.
    assert result.val_metrics["val_loss"] < 0.3
    assert result.val_metrics["val_roc_auc"] > 0.95


@pytest.mark.parametrize(("activation", "module"), [("relu", nn.ReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh)])
def test_network_follows_configured_architecture(activation: str, module: type[nn.Module]) -> None:
    network = TabularMLP(10, hidden_sizes=(8, 4), activation=activation, dropout=0.2)
    linear = [layer for layer in network.layers if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [(10, 8), (8, 4), (4, 1)]
    assert sum(isinstance(layer, module) for layer in network.layers) == 2
    assert sum(isinstance(layer, nn.Dropout) for layer in network.layers) == 2
    assert network(torch.zeros(3, 10)).shape == (3,)


@pytest.mark.parametrize(
    ("field", "value"),
    [("optimizer", "lbfgs"), ("scheduler", "warmup"), ("activation", "sigmoid"), ("momentum", 1.0), ("dropout", 1.0), ("lr", 0.0), ("pos_weight", "auto")],
)
def test_invalid_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_balanced_pos_weight_uses_train_class_ratio(cancer_frame: FrameAndFeatures, tmp_path: Path) -> None:
    frame, features = cancer_frame
    config = TrainConfig(hidden_sizes=(8,), max_epochs=1, pos_weight="balanced")
    result = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path)
    train_labels = _split(frame, "train")[LABEL_COLUMN]
    spec = json.loads((result.model_dir / MODEL_SPEC_FILENAME).read_text())
    expected = (train_labels == 0).sum() / (train_labels == 1).sum()
    assert spec["resolved_pos_weight"] == pytest.approx(expected, rel=1e-6)


def test_bad_labels_are_refused_with_the_split_named(cancer_frame: FrameAndFeatures, tmp_path: Path) -> None:
    frame, features = cancer_frame
    frame = frame.copy()
    frame.loc[frame.index[frame["split"] == "validation"][:2], LABEL_COLUMN] = 2
    with pytest.raises(ValueError, match="2 rows of the validation split"):
        train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, FAST_CONFIG, tmp_path)


@pytest.mark.parametrize("scheduler", ["none", "cosine", "step", "plateau", "onecycle"])
def test_learning_rate_follows_the_configured_schedule(
    scheduler: str, cancer_frame: FrameAndFeatures, tmp_path: Path
) -> None:
    frame, features = cancer_frame
    config = TrainConfig(hidden_sizes=(8,), optimizer="sgd", scheduler=scheduler, lr=0.05, max_epochs=3,
                         early_stopping_patience=10)
    result = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path)
    rates = [entry["lr"] for entry in result.history]
    expected = {
        "none": [0.05, 0.05, 0.05],
        "cosine": [0.05, 0.0375, 0.0125],  # 0.05 * (1 + cos(pi * epoch / 3)) / 2
        "step": [0.05, 0.005, 0.0005],  # x0.1 every max_epochs // 3 epochs
        "plateau": [0.05, 0.05, 0.05],  # the validation loss keeps falling: no reduction
    }
    if scheduler == "onecycle":  # per step: starts at lr / 25, warms up towards lr, then anneals
        assert rates[0] == pytest.approx(0.05 / 25) and max(rates) <= 0.05 and rates[1] > rates[0]
    else:
        assert rates == pytest.approx(expected[scheduler])
    assert result.val_metrics["val_roc_auc"] > 0.9
    assert json.loads((result.model_dir / MODEL_SPEC_FILENAME).read_text())["train_config"]["scheduler"] == scheduler


def test_scheduler_options_reach_the_schedule(cancer_frame: FrameAndFeatures, tmp_path: Path) -> None:
    frame, features = cancer_frame
    config = TrainConfig.from_spec("s1", {"family": "mlp", "hidden_sizes": [8]}, {
        "optimizer": "sgd", "scheduler": "step", "scheduler_options": {"step_size": 1, "gamma": 0.5}, "lr": 0.04,
        "max_epochs": 3, "early_stopping_patience": 10})
    result = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path)
    assert [entry["lr"] for entry in result.history] == pytest.approx([0.04, 0.02, 0.01])


def test_a_nan_loss_stops_training_naming_the_spec_and_the_epoch(
    cancer_frame: FrameAndFeatures, tmp_path: Path
) -> None:
    from medllm_pipelines.lib.train.optim import TrainingDivergedError

    frame, features = cancer_frame
    config = TrainConfig(hidden_sizes=(8,), optimizer="sgd", momentum=0.0, lr=1e30, max_epochs=5, dropout=0.0)
    with pytest.raises(TrainingDivergedError, match=r"spec t2d_demo: training loss became (nan|inf) at epoch \d"):
        train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path,
                                 spec_id="t2d_demo")


def test_a_spec_naming_an_unknown_component_is_refused_before_training() -> None:
    from medllm_pipelines.lib.train.optim import UnknownComponentError

    with pytest.raises(UnknownComponentError, match="spec s1: unknown network 'resnet'; choose one of mlp"):
        TrainConfig.from_spec("s1", {"family": "resnet"}, {})
    with pytest.raises(UnknownComponentError, match="spec s1: unknown optimizer 'lamb'.*adam, adamw"):
        TrainConfig.from_spec("s1", {"family": "mlp"}, {"optimizer": "lamb"})
    with pytest.raises(UnknownComponentError, match="spec s1: unknown scheduler 'warmup'.*onecycle"):
        TrainConfig.from_spec("s1", {"family": "mlp"}, {"scheduler": "warmup"})
    with pytest.raises(ValueError, match=r"spec s1: unknown training/network keys \['epochs'\]"):
        TrainConfig.from_spec("s1", {"family": "mlp"}, {"epochs": 3})
    config = TrainConfig.from_spec("s1", {"family": "mlp", "hidden_sizes": [4]}, {"optimizer": "adamw", "lr": 0.01})
    assert config.hidden_sizes == (4,) and config.optimizer == "adamw"
