"""A spec's network and training blocks at demo and full size, and how the size is chosen (MEDLLM_TRAINING_SIZE)."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.curate import spec as spec_module
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.train.optim import UnknownComponentError
from medllm_pipelines.lib.train.runs import training_config


def test_t2d_demo_size_is_the_training_block_and_full_size_applies_the_overrides() -> None:
    spec = load_spec("t2d_risk")
    assert spec.network_family == "mlp"
    demo, full = training_config(spec, "demo"), training_config(spec, "full")
    assert (demo.optimizer, demo.scheduler, demo.max_epochs, demo.hidden_sizes) == ("adam", "none", 60, (32, 16))
    assert (full.optimizer, full.scheduler, full.max_epochs, full.hidden_sizes) == ("adamw", "cosine", 200, (128, 64, 32))
    assert full.lr == demo.lr and full.seed == demo.seed  # what full does not override stays
    assert spec.training_for("demo") == spec.training  # the demo block as written
    with pytest.raises(ValueError, match="spec t2d_risk: training size must be one of demo, full, got 'huge'"):
        spec.training_for("huge")


def test_a_spec_without_network_or_training_still_loads(tmp_path, monkeypatch) -> None:
    """Dataset-only specs written before issue 11 (no network, training or full block) keep loading."""
    text = (spec_module.SPECS_DIR / "t2d_risk.yaml").read_text()
    dataset_only = text[: text.index("# The network")] + text[text.index("metrics:"):]
    (tmp_path / "dataset_only.yaml").write_text(dataset_only.replace("id: t2d_risk", "id: dataset_only"))
    monkeypatch.setattr(spec_module, "SPECS_DIR", tmp_path)
    load_spec.cache_clear()
    try:
        spec = load_spec("dataset_only")
    finally:
        monkeypatch.undo()
        load_spec.cache_clear()
    assert spec.network_family is None and spec.training == {} and spec.full == {}
    assert spec.training_for("full") == spec.training_for("demo") == {}
    assert training_config(spec, "demo").optimizer == "adam"  # an MLP with the defaults, as before


def _spec_with(tmp_path, monkeypatch, old: str, new: str, spec_id: str):
    text = (spec_module.SPECS_DIR / "t2d_risk.yaml").read_text()
    assert old in text
    (tmp_path / f"{spec_id}.yaml").write_text(text.replace(old, new).replace("id: t2d_risk", f"id: {spec_id}"))
    monkeypatch.setattr(spec_module, "SPECS_DIR", tmp_path)
    load_spec.cache_clear()
    try:
        return load_spec(spec_id)
    finally:
        monkeypatch.undo()
        load_spec.cache_clear()


@pytest.mark.parametrize(("old", "new", "kind", "name"), [
    ("family: mlp", "family: transformer", "network", "transformer"),
    ("optimizer: adam  ", "optimizer: lion  ", "optimizer", "lion"),
    ("scheduler: none", "scheduler: warmup", "scheduler", "warmup"),
])
def test_an_unknown_component_names_the_spec_kind_and_choices(tmp_path, monkeypatch, old, new, kind, name) -> None:
    spec = _spec_with(tmp_path, monkeypatch, old, new, "t2d_bad_component")
    with pytest.raises(UnknownComponentError, match=f"spec t2d_bad_component: unknown {kind} '{name}'; choose one of"):
        training_config(spec, "demo")


def test_a_training_block_that_is_not_a_mapping_is_refused(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="spec t2d_bad_block: full must be a mapping"):
        _spec_with(tmp_path, monkeypatch, "full:\n  optimizer: adamw", "full: [adamw]\nunused:\n  optimizer: adamw",
                   "t2d_bad_block")


def test_the_training_size_comes_from_the_environment_through_run_settings() -> None:
    from medllm_pipelines.defs.resources import run_settings_resource
    from medllm_pipelines.settings import load_settings

    assert load_settings({"MEDLLM_HOME": "/tmp/x"}).training_size == "demo"
    full = load_settings({"MEDLLM_HOME": "/tmp/x", "MEDLLM_TRAINING_SIZE": "Full"})
    assert full.training_size == "full" and run_settings_resource(full).training_size == "full"
    with pytest.raises(ValueError, match="MEDLLM_TRAINING_SIZE must be one of demo, full, got 'large'"):
        load_settings({"MEDLLM_HOME": "/tmp/x", "MEDLLM_TRAINING_SIZE": "large"})
