"""LoRA instruction tuning from an operator-supplied local checkpoint (issue 11, text generation, production path).

The base model is a tiny random Llama the test writes itself (tiny_base_model.py): nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medllm_pipelines.lib.train.generative.base_model import (
    BaseModelError,
    TokenizerMismatchError,
    check_tokenizer_matches,
    inspect_base_model,
    load_base_model,
)
from medllm_pipelines.lib.train.generative.lora import (
    ADAPTER_DIRNAME,
    InstructionPair,
    LoraSettings,
    encode_pair,
    fine_tune_lora,
    generate,
    load_tuned_model,
)
from medllm_pipelines.lib.train.generative.system import IGNORE_INDEX
from medllm_pipelines_tests.lib.train.tiny_base_model import write_tiny_base_model

PAIRS = [
    InstructionPair("dialogue : patient reports chest pain for two days . note :",
                    "chief complaint chest pain ; assessment I20.9 ; plan ecg"),
    InstructionPair("dialogue : patient reports itchy rash on arms . note :",
                    "chief complaint rash ; assessment L30.9 ; plan cream"),
    InstructionPair("dialogue : patient reports thirst and weight loss . note :",
                    "chief complaint thirst ; assessment E11.9 ; plan hba1c"),
]
SETTINGS = LoraSettings(r=8, alpha=32, dropout=0.0, lr=1e-2, warmup_steps=3, max_epochs=30, batch_size=1,
                        max_length=64, seed=11)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    texts = [f"{p.prompt} {p.response}" for p in PAIRS]
    return write_tiny_base_model(tmp_path_factory.mktemp("base") / "tiny-llama", texts)


@pytest.fixture(scope="module")
def tuned(base_folder, tmp_path_factory):
    base = inspect_base_model(base_folder, spec_id="note_generator")
    return base, fine_tune_lora(base, PAIRS, PAIRS[:1], SETTINGS, tmp_path_factory.mktemp("out"),
                                spec_id="note_generator")


def test_only_the_adapter_trains_and_the_loss_falls(tuned) -> None:
    _, result = tuned
    assert 0 < result.trainable_parameters < 0.5 * result.total_parameters
    history = result.history.history
    assert len(history) == SETTINGS.max_epochs
    assert history[-1]["train_loss"] < 0.25 * history[0]["train_loss"]
    assert result.as_metadata()["base_model"] == "tiny-llama"  # the folder's name, never the operator's full path


def test_the_saved_adapter_reloads_and_writes_the_learned_notes(tuned) -> None:
    base, result = tuned
    assert (result.adapter_dir / "adapter_config.json").is_file() and result.adapter_dir.name == ADAPTER_DIRNAME
    assert json.loads((result.adapter_dir / "lora_settings.json").read_text())["lora_r"] == 8
    model, tokenizer = load_tuned_model(base, result.adapter_dir)
    for pair in PAIRS:  # compared as the tokenizer writes the text back (word-level: spaces around '.')
        expected = tokenizer.decode(tokenizer(pair.response, add_special_tokens=False)["input_ids"])
        assert generate(model, tokenizer, pair.prompt, max_new_tokens=16) == expected


def test_the_base_checkpoint_on_disk_is_unchanged(tuned, base_folder) -> None:
    base, _ = tuned
    model, tokenizer = load_base_model(base)
    expected = tokenizer.decode(tokenizer(PAIRS[0].response, add_special_tokens=False)["input_ids"])
    assert generate(model, tokenizer, PAIRS[0].prompt, max_new_tokens=12) != expected


def test_tuning_is_deterministic(base_folder, tmp_path) -> None:
    base = inspect_base_model(base_folder)
    quick = LoraSettings(**{**SETTINGS.__dict__, "max_epochs": 2})
    first = fine_tune_lora(base, PAIRS, PAIRS[:1], quick, tmp_path / "a")
    second = fine_tune_lora(base, PAIRS, PAIRS[:1], quick, tmp_path / "b")
    assert first.history.history[-1]["train_loss"] == second.history.history[-1]["train_loss"]


def test_the_prompt_is_masked_and_the_response_kept_whole(base_folder) -> None:
    _, tokenizer = load_base_model(inspect_base_model(base_folder))
    example = encode_pair(tokenizer, PAIRS[0], max_length=18, add_bos=True)
    response = tokenizer(PAIRS[0].response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(example["input_ids"]) == 18
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["labels"][-len(response):] == response
    assert set(example["labels"][:-len(response)]) == {IGNORE_INDEX}


@pytest.mark.parametrize(("make", "cause"), [
    (lambda root: root / "absent", "does not exist"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "holds no weights"),
    (lambda root: (root / "file.txt").write_text("x") and root / "file.txt", "is not a directory"),
])
def test_an_unusable_base_path_is_refused_naming_the_spec(tmp_path, make, cause: str) -> None:
    with pytest.raises(BaseModelError, match=rf"spec note_generator: base model at .* {cause}"):
        inspect_base_model(make(tmp_path), spec_id="note_generator")


def test_an_unset_base_path_says_which_variable_to_set() -> None:
    with pytest.raises(BaseModelError, match="MEDLLM_BASE_MODEL_PATH"):
        inspect_base_model(None, spec_id="note_generator")


def test_weights_without_a_tokenizer_are_refused(base_folder, tmp_path) -> None:
    copy = tmp_path / "no-tokenizer"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((base_folder / name).read_bytes())
    with pytest.raises(BaseModelError, match="holds no tokenizer"):
        inspect_base_model(copy)


def test_a_tokenizer_of_another_model_is_refused(base_folder, tmp_path) -> None:
    model, _ = load_base_model(inspect_base_model(base_folder))
    other = write_tiny_base_model(tmp_path / "other", [" ".join(f"w{i}" for i in range(200))])
    _, bigger = load_base_model(inspect_base_model(other))
    with pytest.raises(TokenizerMismatchError, match="spec note_generator: the tokenizer has"):
        check_tokenizer_matches(model, bigger, spec_id="note_generator")


def test_a_diverging_tuning_fails_naming_the_spec(base_folder, tmp_path) -> None:
    from medllm_pipelines.lib.train.optim import TrainingDivergedError

    base = inspect_base_model(base_folder)
    with pytest.raises(TrainingDivergedError, match="spec note_generator"):
        fine_tune_lora(base, PAIRS, PAIRS[:1], LoraSettings(lr=float("inf"), max_epochs=2, max_length=64),
                       tmp_path, spec_id="note_generator")
    assert not (tmp_path / ADAPTER_DIRNAME).exists()
