"""Optimisers and learning-rate schedules chosen by name in a spec (row M10)."""

from __future__ import annotations

import math

import pytest
import torch

from medllm_pipelines.lib.train.optim import (
    OPTIMIZER_NAMES,
    SCHEDULER_NAMES,
    TrainingDivergedError,
    UnknownComponentError,
    build_optimizer,
    check_finite_loss,
    lightning_optimizers,
)


def _params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(3, 1).parameters())


@pytest.mark.parametrize(
    ("name", "optimizer_class"),
    [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
     ("adagrad", torch.optim.Adagrad), ("sgd", torch.optim.SGD)],
)
def test_each_named_optimiser_is_built_with_the_spec_values(name: str, optimizer_class: type) -> None:
    optimizer = build_optimizer(name, _params(), lr=0.02, weight_decay=1e-3, momentum=0.8)
    assert type(optimizer) is optimizer_class
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["weight_decay"] == 1e-3
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.8


def test_every_optimiser_reduces_a_simple_loss() -> None:
    """Each optimiser really optimises: 50 steps on a least-squares problem lower the loss."""
    torch.manual_seed(0)
    features, target = torch.randn(64, 3), torch.randn(64, 1)
    for name in OPTIMIZER_NAMES:
        model = torch.nn.Linear(3, 1)
        optimizer = build_optimizer(name, model.parameters(), lr=0.05)
        start = torch.nn.functional.mse_loss(model(features), target).item()
        for _ in range(50):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(features), target)
            loss.backward()
            optimizer.step()
        assert loss.item() < start, name


@pytest.mark.parametrize(("kind", "call"), [
    ("optimizer", lambda: build_optimizer("lamb", _params(), lr=0.1, spec_id="triage")),
    ("scheduler", lambda: lightning_optimizers("adam", _params(), lr=0.1, scheduler="warmup", spec_id="triage")),
])
def test_an_unknown_name_is_refused_naming_spec_kind_and_choices(kind: str, call) -> None:
    with pytest.raises(UnknownComponentError) as refused:
        call()
    message = str(refused.value)
    assert message.startswith(f"spec triage: unknown {kind}")
    choices = OPTIMIZER_NAMES if kind == "optimizer" else SCHEDULER_NAMES
    assert all(choice in message for choice in choices)
    assert isinstance(refused.value, ValueError) and refused.value.spec_id == "triage"


def _rates(configured: dict, epochs: int, steps_per_epoch: int = 1) -> list[float]:
    """The learning rate at the start of each epoch, stepping the schedule as Lightning does."""
    optimizer = configured["optimizer"]
    schedule = configured.get("lr_scheduler")
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            optimizer.step()
            if schedule and schedule["interval"] == "step":
                schedule["scheduler"].step()
        if schedule and schedule["interval"] == "epoch":
            if schedule.get("monitor"):
                schedule["scheduler"].step(1.0)  # a validation loss that never improves
            else:
                schedule["scheduler"].step()
    return rates


def test_schedules_shape_the_learning_rate() -> None:
    def configured(scheduler: str) -> dict:
        return lightning_optimizers("sgd", _params(), lr=0.1, scheduler=scheduler, max_epochs=6, steps_per_epoch=4)

    assert _rates(configured("none"), 6) == [0.1] * 6
    cosine = _rates(configured("cosine"), 6)
    assert cosine == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)])
    assert _rates(configured("step"), 6) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    plateau = configured("plateau")
    assert plateau["lr_scheduler"]["monitor"] == "val_loss"
    assert _rates(plateau, 6) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 0.05])  # patience 3, factor 0.5
    onecycle = configured("onecycle")
    assert onecycle["lr_scheduler"]["interval"] == "step"
    rates = _rates(onecycle, 6, steps_per_epoch=4)
    assert rates[0] == pytest.approx(0.1 / 25) and max(rates) <= 0.1 and rates[2] > rates[-1] > rates[0]  # warm-up to ~lr, then annealing


def test_scheduler_options_override_the_defaults() -> None:
    configured = lightning_optimizers("adam", _params(), lr=0.1, scheduler="step", max_epochs=9,
                                      scheduler_options={"step_size": 1, "gamma": 0.5})
    assert _rates(configured, 3) == pytest.approx([0.1, 0.05, 0.025])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_names_the_spec_and_the_epoch(value: float) -> None:
    with pytest.raises(TrainingDivergedError, match=f"spec t2d_risk: training loss became {value} at epoch 7"):
        check_finite_loss(torch.tensor(value), spec_id="t2d_risk", epoch=7)
    check_finite_loss(torch.tensor(0.3), spec_id="t2d_risk", epoch=7)
