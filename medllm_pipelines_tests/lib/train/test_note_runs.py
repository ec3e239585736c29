"""The note_generator spec and its one-MLflow-run training: the config from the spec (bad specs refused naming it),
a saved generator that loads back to the same text (and refuses tampered files), a retrieval baseline that beats
chance, the run's inputs, params, metrics, pyfunc model and registration, and a NaN loss that fails the run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medllm_pipelines.lib.common.structured_note import StructuredNote, parse_note, render_note
from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.evaluate.note_metrics import score_notes
from medllm_pipelines.lib.synth.consultations import KINDS, build_consultations
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.train.generative.note_predictor import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ModelFolderError,
    NoteGeneratorPredictor,
    save_note_generator,
)
from medllm_pipelines.lib.train.generative.note_pyfunc import input_example
from medllm_pipelines.lib.train.generative.note_runs import (
    CANARIES_FILE,
    CANARY_KEYS,
    EXAMPLES_ARTIFACT,
    TEST_DRAFTS_FILE,
    RetrievalNoteBaseline,
    note_generator_config,
    train_note_spec_model,
)
from medllm_pipelines.lib.train.generative.notes import (
    NoteGeneratorConfig,
    build_note_tokenizer,
    train_note_generator,
)
from medllm_pipelines.lib.train.optim import TrainingDivergedError, UnknownComponentError
from medllm_pipelines.lib.train.registry import CHALLENGER, list_registered
from medllm_pipelines.lib.train.text.tokenizer import TokenizerMismatchError
from medllm_pipelines.lib.train.tracking import FAILURE_REASON_TAG

SPEC = load_spec("note_generator")
# The runs below train without the spec's canaries (a 30-step model is too fragile to train on changed notes);
# test_planted_canaries_and_the_test_drafts_stay_in_the_model_folder_out_of_mlflow trains with them.
NO_CANARIES = dataclasses.replace(SPEC, training={k: v for k, v in SPEC.training.items() if k not in CANARY_KEYS})
BENCHMARK_RESULT = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "note_generator.json"
# Tiny and seeded: ~40 train pairs, 30 steps, short notes (the layout is learned; the content is not the point).
TINY = NoteGeneratorConfig(n_layer=1, n_head=2, n_embd=32, block_size=384, instruction_steps=30, batch_size=8,
                           lr=5e-3, warmup_steps=5, max_new_tokens=40, seed=3, cpu_threads=1)


def _frame(count: int, seed: int, splits: tuple[int, int]) -> pd.DataFrame:
    """The dataset contract of curate/note_pairs: de-identified dialogue and rendered note per visit, a split each."""
    pairs = build_consultations(count, stream(seed, "note-runs-test"), kinds=KINDS)
    rows = []
    for i, pair in enumerate(pairs):
        split = "train" if i < splits[0] else "validation" if i < splits[1] else "test"
        rows.append({"text_id": pair.pair_id, "patient_pseudonym": f"P{i:04d}", "institution": "demo",
                     "language": pair.language, "visit_kind": pair.kind, "dialogue": pair.dialogue_text(),
                     "note": render_note(pair.note), "split": split})
    return pd.DataFrame(rows)


FRAME = _frame(60, 5, (40, 48))


@contextmanager
def _mlflow_at(folder: Path) -> Iterator[str]:
    """A fresh sqlite tracking store and registry under ``folder``; the previous URI is restored afterwards."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    try:
        yield mlflow.create_experiment("notes", artifact_location=(folder / "artifacts").as_uri())
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


def test_the_spec_gives_the_demo_config_and_the_benchmarked_full_config() -> None:
    demo, full = note_generator_config(SPEC, "demo"), note_generator_config(SPEC, "full")
    assert {k: v for k, v in demo.as_params().items() if k in SPEC.training} == NO_CANARIES.training
    assert (demo.n_layer, demo.n_embd) == (SPEC.network["n_layer"], SPEC.network["n_embd"])
    benchmarked = json.loads(BENCHMARK_RESULT.read_text())["config"]
    assert full.as_params() == {**benchmarked, "cpu_threads": 0, "max_epochs": 0}  # what the benchmark measured
    assert SPEC.task == "text_generation" and SPEC.network_family == "causal_lm"


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"network": {**SPEC.network, "family": "transformer_encoder"}}, UnknownComponentError,
     "spec note_generator: unknown network 'transformer_encoder'; choose one of causal_lm"),
    ({"training": {**SPEC.training, "epochs": 3}}, ValueError,
     "spec note_generator: unknown training key\\(s\\) epochs"),
    ({"network": {**SPEC.network, "n_head": 3}}, ValueError,
     "spec note_generator: GPTConfig: n_embd 64 is not a multiple"),
    ({"training": {**SPEC.training, "max_new_tokens": 999}}, ValueError,
     "spec note_generator: need 0 < max_new_tokens"),
    ({"training": {**SPEC.training, "instruction_steps": "many"}}, ValueError,
     "spec note_generator: instruction_steps must be an integer"),
    ({"task": "multiclass_classification"}, ValueError, "spec note_generator: task 'multiclass_classification'"),
])
def test_a_bad_spec_is_refused_naming_the_spec(change: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        note_generator_config(dataclasses.replace(SPEC, **change), "demo")


def _rows(frame: pd.DataFrame) -> list[tuple[str, str, StructuredNote]]:
    return [(d, lang, parse_note(n, language=lang)) for d, n, lang in zip(frame.dialogue, frame.note, frame.language)]


@pytest.fixture(scope="module")
def saved_generator(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    train, validation = _rows(FRAME[FRAME.split == "train"]), _rows(FRAME[FRAME.split == "validation"])
    generator = train_note_generator(train, validation, dataclasses.replace(TINY, instruction_steps=10))
    folder = tmp_path_factory.mktemp("note-model") / "model"
    save_note_generator(generator, folder, spec_id="note_generator", dataset_version="v" * 64)
    return generator, folder


def test_a_saved_generator_loads_back_without_lightning_and_writes_the_same_notes(saved_generator) -> None:
    generator, folder = saved_generator
    predictor = NoteGeneratorPredictor.load(folder)
    test = FRAME[FRAME.split == "test"].iloc[:2]
    assert set(test.language) == {"en", "zh"}
    expected = [generator.generate(d, lang) for d, lang in zip(test.dialogue, test.language)]
    assert predictor.generate_many(test.dialogue.tolist(), test.language.tolist()) == expected
    assert predictor.config["dataset_version"] == "v" * 64 and predictor.config["spec_id"] == "note_generator"
    script = ("import sys; "
              "from medllm_pipelines.lib.train.generative.note_predictor import NoteGeneratorPredictor as P; "
              f"p = P.load({str(folder)!r}); print(repr(p.generate(sys.stdin.read(), 'en'))); "
              "assert 'lightning' not in sys.modules, 'Lightning was imported'")
    done = subprocess.run([sys.executable, "-c", script], input=test.dialogue.iloc[0], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == repr(expected[0])


def test_a_changed_file_or_a_foreign_tokenizer_is_refused(saved_generator, tmp_path: Path) -> None:
    _, folder = saved_generator
    tampered = shutil.copytree(folder, tmp_path / "tampered")
    weights = bytearray((tampered / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 0xFF
    (tampered / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(ModelFolderError, match=f"{WEIGHTS_FILE} does not match the SHA-256 in {MANIFEST_FILE}"):
        NoteGeneratorPredictor.load(tampered)

    foreign = shutil.copytree(folder, tmp_path / "foreign")
    other = build_note_tokenizer(["Chief complaint: cough"])
    (foreign / "tokenizer.json").write_text(other.to_str(pretty=False))
    manifest = json.loads((foreign / MANIFEST_FILE).read_text())  # a consistent manifest: only the size can tell
    manifest["sha256"]["tokenizer.json"] = hashlib.sha256((foreign / "tokenizer.json").read_bytes()).hexdigest()
    (foreign / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(TokenizerMismatchError, match=f"tokenizer has {other.get_vocab_size()} tokens but the model's "
                                                     "embedding has"):
        NoteGeneratorPredictor.load(foreign)
    (folder.parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(ModelFolderError, match="holds no manifest.json"):
        NoteGeneratorPredictor.load(folder.parent / "empty")


def test_the_retrieval_baseline_beats_empty_notes_and_a_random_train_note() -> None:
    train, test = FRAME[FRAME.split == "train"], FRAME[FRAME.split != "train"]
    baseline = RetrievalNoteBaseline.fit(train.dialogue.tolist(), train.note.tolist(), train.language.tolist())
    retrieved = baseline.predict(test.dialogue.tolist(), test.language.tolist())
    gold = [parse_note(n, language=lang) for n, lang in zip(test.note, test.language)]
    shuffled = train.note.sample(len(test), random_state=0, replace=True).tolist()

    def f1(texts: list[str]) -> float:
        return score_notes([parse_note(t, language=lang) for t, lang in zip(texts, test.language)], gold).field_f1

    assert f1(["" for _ in gold]) == 0.0
    assert f1(retrieved) > f1(shuffled) + 0.1
    assert all(parse_note(r).language == lang for r, lang in zip(retrieved, test.language))  # same language


@pytest.fixture(scope="module")
def experiment_id(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One tracking store for the module (creating a sqlite store costs seconds)."""
    with _mlflow_at(tmp_path_factory.mktemp("mlflow")) as experiment:
        yield experiment


@pytest.fixture(scope="module")
def trained_run(experiment_id: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        trained = train_note_spec_model(SplitDataset(FRAME, "e" * 64), NO_CANARIES,
                                        tmp_path_factory.mktemp("note-run"), run.info.run_id, config=TINY)
    return trained, run.info.run_id


def test_the_run_logs_inputs_params_curves_scores_and_registers_a_challenger(trained_run, experiment_id) -> None:
    trained, run_id = trained_run
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert {name: tags["mlflow.data.context"] for name, tags in inputs.items()} == {
        "note_generator-train": "training", "note_generator-validation": "validation", "note_generator-test": "testing"}
    params = run.data.params
    assert params["network_family"] == "causal_lm" and params["training_size"] == "demo"
    assert (params["n_train"], params["n_validation"], params["n_test"]) == ("40", "8", "12")
    assert params["instruction_steps"] == "30" and int(params["parameters"]) == trained.result.parameters > 0
    assert int(params["vocab_size"]) == trained.result.vocab_size
    curve = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in curve] == list(range(trained.result.epochs_run)) and trained.result.epochs_run >= 5
    metrics = run.data.metrics
    for name in ("test_field_f1", "test_field_precision", "test_field_recall", "test_icd10_exact_match",
                 "test_rouge_l", "test_f1_assessment", "test_field_f1_en", "test_rouge_l_zh",
                 "baseline_test_field_f1", "baseline_test_rouge_l_en"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["test_field_f1"] == pytest.approx(trained.result.test_metrics["test_field_f1"])
    assert metrics["baseline_test_field_f1"] > 0.3  # retrieval finds the same condition's note

    examples = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EXAMPLES_ARTIFACT))
                          .read_text())["examples"]
    test = FRAME[FRAME.split == "test"]
    assert len(examples) == 5 and [e["gold"] for e in examples] == test.note.iloc[:5].tolist()

    [entry] = list_registered()
    assert (entry.name, entry.family, entry.aliases, entry.run_id) == ("note_generator", "causal_lm", (CHALLENGER,),
                                                                       run_id)
    assert entry.metrics["test_field_f1"] == pytest.approx(trained.result.test_metrics["test_field_f1"])
    meta = trained.as_metadata()
    assert meta["trained"] is True and meta["registered_model"] == "note_generator" and meta["family"] == "causal_lm"
    assert meta["steps"] == 30 and meta["n_test"] == 12 and meta["mlflow_run_id"] == run_id
    assert set(meta["test_metrics_by_language"]) == {"en", "zh"}
    assert trained.record(experiment_id, "dagster-1")["model_dir"] == str(trained.result.model_dir)
    assert "test field F1" in trained.summary()


def test_planted_canaries_and_the_test_drafts_stay_in_the_model_folder_out_of_mlflow(trained_run, experiment_id,
                                                                                   tmp_path: Path) -> None:
    assert not (trained_run[0].result.model_dir / CANARIES_FILE).exists()  # no canaries declared: none planted
    with mlflow.start_run(experiment_id=experiment_id) as run:
        trained = train_note_spec_model(SplitDataset(FRAME, "e" * 64), SPEC, tmp_path, run.info.run_id,
                                        config=dataclasses.replace(TINY, instruction_steps=5), register=False)
    folder = trained.result.model_dir
    canaries = json.loads((folder / CANARIES_FILE).read_text())
    assert len(canaries["secrets"]) == SPEC.training["canaries"]
    assert canaries["repeats"] == SPEC.training["canary_repeats"]
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert params["canaries_planted"] == str(SPEC.training["canaries"])
    assert not any(secret in json.dumps(params) for secret in canaries["secrets"])
    logged = Path(mlflow.artifacts.download_artifacts(trained.model_uri))
    assert not list(logged.rglob(CANARIES_FILE)) and not list(logged.rglob(TEST_DRAFTS_FILE))
    drafts = json.loads((folder / TEST_DRAFTS_FILE).read_text())["drafts"]
    assert sorted(drafts) == sorted(FRAME[FRAME.split == "test"].text_id)


def test_the_logged_pyfunc_writes_a_note_for_the_written_input_example(trained_run) -> None:
    trained, _ = trained_run
    model = mlflow.pyfunc.load_model(trained.model_uri)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["dialogue", "language"]
    out = model.predict(input_example())
    assert list(out.columns) == ["note", "icd10_codes"] and len(out) == 1
    predictor = NoteGeneratorPredictor.load(trained.result.model_dir)
    assert out.note.iloc[0] == predictor.generate(input_example().dialogue.iloc[0], "en")
    assert out.note.iloc[0].strip()  # the tiny model already writes the headers
    assert out.icd10_codes.iloc[0] == ",".join(parse_note(out.note.iloc[0], language="en").icd10_codes)


def test_a_nan_loss_fails_the_run_with_its_reason_and_registers_nothing(trained_run, experiment_id,
                                                                      tmp_path: Path) -> None:
    registered_before = list_registered()
    diverging = dataclasses.replace(TINY, lr=1e30, instruction_steps=5)
    with pytest.raises(TrainingDivergedError, match=r"spec note_generator: training loss became (nan|inf)"):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            train_note_spec_model(SplitDataset(FRAME, "e" * 64), SPEC, tmp_path, run.info.run_id, config=diverging)
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags[FAILURE_REASON_TAG].startswith(
        "TrainingDivergedError: spec note_generator: training loss became")
    assert list_registered() == registered_before  # no new version, challenger unmoved


def test_a_small_training_set_is_capped_at_max_epochs_and_the_demo_is_not() -> None:
    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.train.generative.note_runs import note_generator_config

    demo, full = (note_generator_config(load_spec("note_generator"), size) for size in ("demo", "full"))
    assert demo.steps_for(40) == 14 * 5 and demo.steps_for(300) == demo.instruction_steps == 500
    assert full.steps_for(40) == full.instruction_steps  # full size: uncapped
