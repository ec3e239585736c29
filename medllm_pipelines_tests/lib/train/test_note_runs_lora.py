"""train/note_generator's LoRA path: with a base checkpoint path, the same one-MLflow-run training tunes an adapter on
the operator's local model instead of the project's GPT, scores the test split, logs a pyfunc that rebuilds base +
adapter, registers note_generator tagged with the base and the adapter kind, and leaves the base on disk untouched;
an unusable base or a diverging loss fails the run and registers nothing.

The base is a tiny random Llama written by the test on the pairs' texts (tiny_base_model.py): nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.common.structured_note import parse_note
from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.evaluate.note_metrics import score_notes
from medllm_pipelines.lib.train.generative.base_model import BaseModelError, base_model_path_from_env
from medllm_pipelines.lib.train.generative.lora import ADAPTER_DIRNAME, LoraSettings
from medllm_pipelines.lib.train.generative.note_lora import (
    NOTE_LORA_FILE,
    NoteLoraConfig,
    NoteLoraPredictor,
    note_lora_config,
)
from medllm_pipelines.lib.train.generative.note_pyfunc import input_example
from medllm_pipelines.lib.train.generative.note_runs import train_note_spec_model
from medllm_pipelines.lib.train.generative.note_text import note_prompt
from medllm_pipelines.lib.train.optim import TrainingDivergedError
from medllm_pipelines.lib.train.registry import CHALLENGER, list_registered
from medllm_pipelines.lib.train.text.tokenizer import TokenizerMismatchError
from medllm_pipelines.lib.train.tracking import FAILURE_REASON_TAG
from medllm_pipelines_tests.lib.train.test_note_runs import FRAME, _mlflow_at
from medllm_pipelines_tests.lib.train.tiny_base_model import write_tiny_base_model

SPEC = load_spec("note_generator")
DATASET = SplitDataset(FRAME, "f" * 64)
# Tiny and seeded: 40 train pairs, 2 epochs of 5 steps, short notes (the run's wiring is the point, not the notes).
TINY = NoteLoraConfig(LoraSettings(r=8, alpha=32, dropout=0.0, lr=1e-2, warmup_steps=2, max_epochs=2, batch_size=8,
                                   max_length=192, seed=11), max_new_tokens=16)


def _texts() -> list[str]:
    return [f"{note_prompt(d, lang)} {n}" for d, n, lang in zip(FRAME.dialogue, FRAME.note, FRAME.language)]


def _file_digests(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_base_model(tmp_path_factory.mktemp("base") / "tiny-llama", _texts())


@pytest.fixture(scope="module")
def experiment_id(tmp_path_factory: pytest.TempPathFactory):
    with _mlflow_at(tmp_path_factory.mktemp("mlflow-lora")) as experiment:
        yield experiment


@pytest.fixture(scope="module")
def lora_run(experiment_id: str, base_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    before = _file_digests(base_folder)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        trained = train_note_spec_model(DATASET, SPEC, tmp_path_factory.mktemp("note-lora-run"), run.info.run_id,
                                        config=TINY, base_model_path=str(base_folder))
    return trained, run.info.run_id, before


def test_the_spec_lora_block_gives_demo_and_full_settings() -> None:
    demo, full = note_lora_config(SPEC, "demo"), note_lora_config(SPEC, "full")
    assert demo.settings.target_modules == "all-linear" and demo.settings.add_bos is True
    assert 0 < demo.max_new_tokens < demo.settings.max_length and 0 < full.max_new_tokens < full.settings.max_length
    assert (full.settings.r, full.settings.max_epochs) != (demo.settings.r, demo.settings.max_epochs)


@pytest.mark.parametrize(("block", "message"), [
    ({"r": 8, "epochs": 3}, "spec note_generator: unknown lora key\\(s\\) epochs"),
    ({"r": "eight"}, "spec note_generator: lora.r must be an integer"),
    ({"add_bos": "yes"}, "spec note_generator: lora.add_bos must be true or false"),
    ({"max_length": 64, "max_new_tokens": 64}, "spec note_generator: NoteLoraConfig: need 0 < max_new_tokens"),
    ({"r": 0}, "spec note_generator: LoraSettings: r >= 1"),
    ({}, "spec note_generator: declares no lora: block"),
])
def test_a_bad_lora_block_is_refused_naming_the_spec_and_the_key(block: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        note_lora_config(SPEC, "demo", block)


def test_the_base_path_is_read_from_the_environment_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLLM_BASE_MODEL_PATH", "  ")
    assert base_model_path_from_env() is None  # blank is unset: the GPT path
    monkeypatch.setenv("MEDLLM_BASE_MODEL_PATH", "/srv/models/base")
    assert base_model_path_from_env() == "/srv/models/base"


def test_the_run_tunes_an_adapter_scores_the_test_split_and_registers_it_tagged(lora_run, base_folder) -> None:
    trained, run_id, _ = lora_run
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    weights = hashlib.sha256((base_folder / "model.safetensors").read_bytes()).hexdigest()
    assert params["base_model_weights_sha256"] == hashlib.sha256(
        f"model.safetensors\t{weights}\n".encode()).hexdigest()
    assert (params["adapter"], params["base_model"], params["network_family"]) == ("lora", "tiny-llama", "causal_lm")
    assert str(base_folder.parent) not in json.dumps(params)  # the folder's name only, never the operator's path
    assert (params["lora_r"], params["max_new_tokens"], params["n_train"], params["steps"]) == ("8", "16", "40", "10")
    assert 0 < int(params["trainable_parameters"]) < int(params["parameters"]) == trained.result.parameters
    curve = MlflowClient().get_metric_history(run_id, "val_loss")
    assert [m.step for m in curve] == [0, 1] == list(range(trained.result.epochs_run))
    history = trained.result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    adapter_dir = trained.result.model_dir
    assert adapter_dir.name == ADAPTER_DIRNAME and (adapter_dir / "adapter_config.json").is_file()
    record = json.loads((adapter_dir / NOTE_LORA_FILE).read_text())
    assert record["base_model_path"] == str(base_folder.resolve())
    assert record["base_model_weights_sha256"] == params["base_model_weights_sha256"]

    # the logged figures are those of the saved adapter on the test split, and the baseline ran beside it
    test = FRAME[FRAME.split == "test"]
    notes = NoteLoraPredictor.load(adapter_dir).generate_many(test.dialogue.tolist(), test.language.tolist())
    rescored = score_notes([parse_note(n, language=lang) for n, lang in zip(notes, test.language)],
                           [parse_note(n, language=lang) for n, lang in zip(test.note, test.language)])
    metrics = run.data.metrics
    assert metrics["test_field_f1"] == pytest.approx(rescored.field_f1)
    assert metrics["test_rouge_l"] == pytest.approx(rescored.as_metrics("test_")["test_rouge_l"])
    assert metrics["baseline_test_field_f1"] > 0.3 and 0.0 <= metrics["test_rouge_l_zh"] <= 1.0

    [entry] = list_registered()
    assert (entry.name, entry.family, entry.aliases, entry.run_id) == ("note_generator", "causal_lm", (CHALLENGER,),
                                                                       run_id)
    assert (entry.tags["base_model"], entry.tags["adapter"]) == ("tiny-llama", "lora")
    meta = trained.as_metadata()
    assert (meta["adapter"], meta["base_model"], meta["registered_model"]) == ("lora", "tiny-llama", "note_generator")
    assert "LoRA on tiny-llama" in trained.summary()

    logged = Path(mlflow.artifacts.download_artifacts(trained.model_uri))
    logged_files = {p.name for p in logged.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", NOTE_LORA_FILE} <= logged_files
    assert "model.safetensors" not in logged_files  # the adapter travels, the base stays where the operator put it


def test_the_pyfunc_rebuilds_base_and_adapter_and_writes_a_note(lora_run) -> None:
    trained, _, _ = lora_run
    model = mlflow.pyfunc.load_model(trained.model_uri)
    out = model.predict(input_example())
    assert list(out.columns) == ["note", "icd10_codes"] and len(out) == 1
    expected = NoteLoraPredictor.load(trained.result.model_dir).generate(input_example().dialogue.iloc[0], "en")
    assert out.note.iloc[0] == expected and expected.strip()
    assert out.icd10_codes.iloc[0] == ",".join(parse_note(expected, language="en").icd10_codes)


def test_the_base_on_disk_is_unchanged_and_another_base_is_refused(lora_run, base_folder, tmp_path) -> None:
    trained, _, before = lora_run
    assert _file_digests(base_folder) == before
    moved = shutil.copytree(trained.result.model_dir, tmp_path / "adapter")
    other = write_tiny_base_model(tmp_path / "other-llama", _texts(), seed=1)  # same vocabulary, other weights
    record = json.loads((moved / NOTE_LORA_FILE).read_text())
    (moved / NOTE_LORA_FILE).write_text(json.dumps({**record, "base_model_path": str(other)}))
    with pytest.raises(BaseModelError, match="holds other weights than the adapter was tuned on"):
        NoteLoraPredictor.load(moved)


def _foreign_tokenizer_base(base_folder: Path, root: Path) -> Path:
    """The base's weights beside a bigger tokenizer: every file is there, the ids run past the embedding."""
    bigger = write_tiny_base_model(root / "bigger", [" ".join(f"w{i}" for i in range(3000))])
    folder = root / "foreign-tokenizer"
    shutil.copytree(bigger, folder)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(base_folder / name, folder / name)
    return folder


@pytest.mark.parametrize(("case", "error", "reason"), [
    ("missing", BaseModelError, "BaseModelError: spec note_generator: base model at .* does not exist"),
    ("foreign_tokenizer", TokenizerMismatchError, "TokenizerMismatchError: spec note_generator: the tokenizer has"),
    ("nan_loss", TrainingDivergedError, "TrainingDivergedError: spec note_generator: training loss became"),
])
def test_an_unusable_base_or_a_diverging_loss_fails_the_run_and_registers_nothing(
        lora_run, experiment_id, base_folder, tmp_path, case: str, error: type, reason: str) -> None:
    registered_before = list_registered()
    path = {"missing": tmp_path / "absent", "nan_loss": base_folder,
            "foreign_tokenizer": _foreign_tokenizer_base(base_folder, tmp_path) if case == "foreign_tokenizer" else None
            }[case]
    config = dataclasses.replace(TINY, settings=dataclasses.replace(TINY.settings, lr=float("inf"), max_epochs=1))
    with pytest.raises(error):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            train_note_spec_model(DATASET, SPEC, tmp_path / "out", run.info.run_id, base_model_path=str(path),
                                  config=config if case == "nan_loss" else TINY)
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FAILED"
    assert re.match(reason, finished.data.tags[FAILURE_REASON_TAG]), finished.data.tags[FAILURE_REASON_TAG]
    assert list_registered() == registered_before  # no new version, challenger unmoved
    assert not (tmp_path / "out" / ADAPTER_DIRNAME).exists()
