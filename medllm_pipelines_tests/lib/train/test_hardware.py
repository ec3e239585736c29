"""Placement and scale from the spec (issue 11 item 8): the same code on a CPU, a GPU, several GPUs or nodes."""

from __future__ import annotations

import dataclasses

import pytest

from medllm_pipelines.lib.train import hardware as hardware_module
from medllm_pipelines.lib.train.hardware import HardwareSettings
from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.tabular import TrainConfig, train_tabular_classifier
from medllm_pipelines_tests.lib.train.conftest import FAST_CONFIG
from medllm_pipelines_tests.lib.train.datasets import LABEL_COLUMN, fitted_preprocessing


def test_auto_on_a_machine_without_a_gpu_is_one_deterministic_cpu_in_full_precision(monkeypatch) -> None:
    monkeypatch.setattr(hardware_module, "gpu_available", lambda: False)
    kwargs = HardwareSettings.from_mapping(None).trainer_kwargs()
    assert kwargs == {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                      "precision": "32-true", "deterministic": True}


def test_auto_on_a_bf16_gpu_is_mixed_precision_and_several_nodes_need_no_code_change(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(hardware_module, "gpu_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    settings = HardwareSettings.from_mapping({"devices": 8, "num_nodes": 2, "strategy": "fsdp"}, spec_id="s")
    kwargs = settings.trainer_kwargs()
    assert kwargs["accelerator"] == "gpu" and kwargs["precision"] == "bf16-mixed"
    assert (kwargs["devices"], kwargs["num_nodes"], kwargs["strategy"]) == (8, 2, "fsdp")
    assert kwargs["deterministic"] == "warn"
    assert settings.as_params()["resolved_precision"] == "bf16-mixed"


@pytest.mark.parametrize(("values", "message"), [
    ({"strategy": "horovod"}, "unknown strategy 'horovod'"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"accelerator": "tpu"}, "unknown accelerator 'tpu'"),
])
def test_an_unknown_component_is_refused_naming_the_spec(values: dict, message: str) -> None:
    with pytest.raises(UnknownComponentError, match="t2d_risk") as refused:
        HardwareSettings.from_mapping(values, spec_id="t2d_risk")
    assert message.split("'")[1] in str(refused.value)


@pytest.mark.parametrize("values", [{"devices": 0}, {"num_nodes": 0}, {"gpus": 2}, {"compile": "yes"}])
def test_impossible_or_unknown_settings_are_refused(values: dict) -> None:
    with pytest.raises(ValueError, match="spec t2d_risk"):
        HardwareSettings.from_mapping(values, spec_id="t2d_risk")


def test_a_spec_training_block_carries_its_hardware() -> None:
    config = TrainConfig.from_spec("t2d_risk", {"family": "mlp"}, {"hardware": {"precision": "32-true"}})
    assert config.hardware == {"precision": "32-true"}
    with pytest.raises(UnknownComponentError, match="spec t2d_risk"):
        TrainConfig.from_spec("t2d_risk", {"family": "mlp"}, {"hardware": {"strategy": "mpi"}})


def test_a_compiled_network_trains_and_its_checkpoint_loads(cancer_frame, tmp_path) -> None:
    frame, features = cancer_frame
    config = dataclasses.replace(FAST_CONFIG, max_epochs=3, hardware={"compile": True})
    result = train_tabular_classifier(frame, fitted_preprocessing(frame, features), LABEL_COLUMN, config, tmp_path)
    assert result.val_metrics["val_roc_auc"] > 0.9
