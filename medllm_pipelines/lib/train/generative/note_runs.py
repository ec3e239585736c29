"""One training of the note_generator spec inside an active MLflow run: what train/note_generator calls.

The asset reads the dataset (de-identified dialogue -> signed note pairs, split by patient) and opens the MLflow
run; everything between is here: the split frames as MLflow inputs, params, per-epoch loss curves, the training
summary, the test split's generated notes scored with ``score_notes`` (field P/R/F1, ICD-10 exact match, ROUGE-L,
per field and per language) beside a retrieval baseline that needs no training, the model logged as a pyfunc
(dialogue and language in, note and ICD-10 codes out) with a signature and a written input example, five
(gold, generated) test notes as an artifact, and the registration under the spec id (family ``causal_lm``,
alias ``challenger``). Any failure tags the run ``failure_reason`` and re-raises: FAILED, nothing registered.

Two paths, one run: the project's GPT from scratch (default), or, when the caller passes ``base_model_path`` (the
asset passes ``MEDLLM_BASE_MODEL_PATH``), a LoRA adapter on that local checkpoint (``note_lora.py``, the spec's
``lora:`` block). The LoRA run also logs the base folder's name and the SHA-256 of its weights, logs the adapter
(not the base) with the pyfunc, and tags the registered version ``base_model`` and ``adapter``.

Canaries (issue 12, the canary-exposure test of Carlini et al. 2019): a spec whose ``training:`` block declares
``canaries: N`` (default 0: nothing planted, today's behaviour) gets N random digit secrets (no PHI) planted in the
GPT's training notes, each ``canary_repeats`` times (default 1), as the first item of the History field (the loss
covers the note only, and ``parse_note`` drops a line under no header). The secrets are written to ``canaries.json``
in the model folder after the model is logged, so they never reach MLflow (the run logs only how many were
planted); ``lib/evaluate/adapters/notes.py`` reads them to measure each canary's exposure. The LoRA path plants none.
The GPT path also keeps the test split's generated drafts (``test_drafts.json``, after logging, keyed by the model
folder's manifest) so that the evaluation re-generates only a spot-check sample of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.train.registry import RegisteredModel

CAUSAL_LM = "causal_lm"
TEXT_GENERATION_TASK = "text_generation"
MODEL_ARTIFACT_NAME = "model"
MODEL_DIRNAME = "model"
TRAINING_SUMMARY_ARTIFACT = "training_summary.json"
EXAMPLES_ARTIFACT = "test_note_examples.json"
EXAMPLES_LOGGED = 5
DATASET_COLUMNS = ("dialogue", "note", "language")
ID_COLUMN = "text_id"  # lib/curate/datasets_notes.py: the pair's id, what the splits are joined on
NETWORK_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
TRAINING_KEYS = ("lr", "weight_decay", "warmup_steps", "instruction_steps", "max_epochs", "pretrain_steps",
                 "batch_size", "max_new_tokens", "seed", "cpu_threads")
# Spec training keys of the canary test, read by `canary_settings` (not NoteGeneratorConfig fields).
CANARY_KEYS = ("canaries", "canary_repeats")
CANARIES_FILE = "canaries.json"
CANARY_FIELD = "history"  # the field the canary goes in, as its first item: "History: my code is 123456; ..."
CANARY_RECORD_VERSION = 1
TEST_DRAFTS_FILE = "test_drafts.json"
DRAFTS_RECORD_VERSION = 1
# The headline figures also reported per language (the rest are in the overall set).
PER_LANGUAGE_METRICS = ("field_f1", "field_precision", "field_recall", "icd10_exact_match", "rouge_l")
SPLITS = (("train", "training"), ("validation", "validation"), ("test", "testing"))
# Run and registered-version tags of the LoRA path: which base (folder name) and which kind of adapter.
BASE_MODEL_TAG = "base_model"
ADAPTER_TAG = "adapter"
LORA_ADAPTER = "lora"
REGISTRY_TAGS = (BASE_MODEL_TAG, ADAPTER_TAG)


def note_generator_config(spec: ModelSpec, size: str = "demo") -> Any:
    """The spec's ``NoteGeneratorConfig`` at ``size``; call it before opening the MLflow run (bad specs fail here).

    Refused with a ValueError naming the spec: a task other than text_generation, a network family other than
    causal_lm (UnknownComponentError), keys the generator does not have, values of the wrong type, a shape GPTConfig
    refuses, and a decoding length that leaves no room for the prompt.
    """
    from medllm_pipelines.lib.train.generative.notes import NoteGeneratorConfig
    from medllm_pipelines.lib.train.optim import check_component

    if spec.task != TEXT_GENERATION_TASK:
        raise ValueError(f"spec {spec.id}: task {spec.task!r} is not {TEXT_GENERATION_TASK!r}")
    network = dict(spec.network_for(size))
    check_component("network", network.pop("family", None), (CAUSAL_LM,), spec.id)
    canary_settings(spec, size)  # refused here, before any run, when malformed
    training = {k: v for k, v in spec.training_for(size).items() if k not in CANARY_KEYS}
    for block, values, known in (("network", network, NETWORK_KEYS), ("training", training, TRAINING_KEYS)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"spec {spec.id}: unknown {block} key(s) {', '.join(unknown)} for the note generator; "
                             f"known: {', '.join(known)}")
    defaults = {f.name: f.default for f in dataclasses.fields(NoteGeneratorConfig)}
    values: dict[str, Any] = {}
    for key, value in {**network, **training}.items():
        kind = type(defaults[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"spec {spec.id}: {key} must be a{'n integer' if kind is int else ' number'}, "
                             f"got {value!r}")
        values[key] = kind(value)
    config = NoteGeneratorConfig(**values)
    try:
        config.network(vocab_size=len(("[PAD]", "[UNK]", "[BOS]", "[EOS]")))
    except ValueError as error:
        raise ValueError(f"spec {spec.id}: {error}") from error
    if not 0 < config.max_new_tokens < config.block_size or min(config.instruction_steps, config.batch_size) < 1 \
            or config.lr <= 0 or min(config.pretrain_steps, config.warmup_steps, config.cpu_threads) < 0:
        raise ValueError(f"spec {spec.id}: need 0 < max_new_tokens < block_size, instruction_steps >= 1, "
                         "batch_size >= 1, lr > 0, and pretrain_steps, warmup_steps, cpu_threads >= 0")
    return config


@dataclass(frozen=True)
class CanarySettings:
    """How many secrets the training plants (0: none) and in how many training notes each goes."""

    count: int = 0
    repeats: int = 1


def canary_settings(spec: ModelSpec, size: str = "demo") -> CanarySettings:
    """The spec's ``training: canaries`` / ``canary_repeats`` at ``size``; ValueError naming the spec when malformed."""
    training = spec.training_for(size)
    values = {key: training.get(key, default) for key, default in zip(CANARY_KEYS, (0, 1), strict=True)}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "canaries" else 1):
            raise ValueError(f"spec {spec.id}: {key} must be an integer >= {0 if key == 'canaries' else 1}, "
                             f"got {value!r}")
    return CanarySettings(values["canaries"], values["canary_repeats"])


@dataclass(frozen=True)
class NoteCanaries:
    """Canaries planted in a generator's training notes: the secrets (membership.PlantedCanaries), the language of
    the notes that hold them and the text the canary line starts with there (``History: ``), which the exposure
    test conditions on."""

    planted: Any  # membership.PlantedCanaries
    language: str
    prefix: str
    seed: int

    def record(self) -> dict[str, Any]:
        """What ``canaries.json`` holds: the template, the secrets and how they were planted (no text of a note)."""
        planted = self.planted
        return {"format_version": CANARY_RECORD_VERSION, "canary_format": planted.canary_format,
                "secrets": list(planted.secrets), "repeats": planted.repeats, "field": CANARY_FIELD,
                "language": self.language, "prefix": self.prefix, "seed": self.seed,
                "hosts_per_secret": {secret: len(rows) for secret, rows in planted.positions.items()}}


def plant_note_canaries(rows: Sequence[tuple[str, str, Any]], settings: CanarySettings, *, seed: int,
                        spec_id: str = "") -> tuple[list[tuple[str, str, Any]], NoteCanaries | None]:
    """(dialogue, language, StructuredNote) training rows with ``settings.count`` canaries in their notes.

    The secrets and their host notes come from ``membership.plant_canaries`` (seeded); each canary becomes the
    first item of the host note's History field. Hosts are English notes when there are enough (the template is
    English), else the notes of the other language. ``settings.count`` 0: the rows unchanged and None.
    """
    from medllm_pipelines.lib.common.structured_note import HEADERS, StructuredNote, render_note
    from medllm_pipelines.lib.evaluate.membership import plant_canaries

    if settings.count == 0:
        return list(rows), None
    by_language = {lang: [i for i, (_, language, _) in enumerate(rows) if language == lang] for lang in ("en", "zh")}
    language = "en" if len(by_language["en"]) >= settings.repeats else "zh"
    hosts = by_language[language]
    if len(hosts) < settings.repeats:
        raise ValueError(f"spec {spec_id}: cannot plant a canary {settings.repeats} times in {len(hosts)} training "
                         "notes of one language")
    planted = plant_canaries([render_note(rows[i][2]) for i in hosts], settings.count, seed=seed,
                             repeats=settings.repeats)
    out = list(rows)
    for secret, canary in zip(planted.secrets, planted.canaries, strict=True):
        for host in planted.positions[secret]:
            dialogue, lang, note = out[hosts[host]]
            fields = {**note.fields, CANARY_FIELD: (canary, *note.items(CANARY_FIELD))}
            out[hosts[host]] = (dialogue, lang, StructuredNote(fields, language=note.language,
                                                               icd10_codes=note.icd10_codes))
    colon = "：" if language == "zh" else ": "
    return out, NoteCanaries(planted, language, f"{HEADERS[language][CANARY_FIELD]}{colon}", seed)


def write_canary_record(model_dir: str | Path, canaries: NoteCanaries) -> Path:
    """``canaries.json`` in the model folder (private, atomic): what the exposure test reads. Never logged."""
    import json

    from medllm_pipelines.lib.common.files import write_private_atomic

    path = Path(model_dir) / CANARIES_FILE
    write_private_atomic(path, json.dumps(canaries.record(), indent=2, sort_keys=True))
    return path


def read_canary_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The canaries planted in the generator of ``model_dir``, None when it was trained without any."""
    import json

    path = Path(model_dir) / CANARIES_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("format_version") != CANARY_RECORD_VERSION or not record.get("secrets"):
        raise ValueError(f"{path} is not a canary record of format {CANARY_RECORD_VERSION} with secrets")
    return record


def _manifest_sha256(model_dir: Path) -> str | None:
    from medllm_pipelines.lib.train.generative.note_predictor import MANIFEST_FILE, sha256_file

    manifest = Path(model_dir) / MANIFEST_FILE
    return sha256_file(manifest) if manifest.is_file() else None


def write_test_drafts(model_dir: str | Path, example_ids: Sequence[str], drafts: Sequence[str],
                      dataset_version: str) -> Path:
    """The test split's drafts as training generated them (``test_drafts.json``, private, atomic), keyed by example
    id and tied to the dataset version and the SHA-256 of the model folder's manifest (weights, tokenizer, config)."""
    import json

    from medllm_pipelines.lib.common.files import write_private_atomic

    if len(example_ids) != len(drafts):
        raise ValueError(f"{len(example_ids)} example ids for {len(drafts)} drafts")
    path = Path(model_dir) / TEST_DRAFTS_FILE
    record = {"format_version": DRAFTS_RECORD_VERSION, "dataset_version": dataset_version,
              "manifest_sha256": _manifest_sha256(Path(model_dir)), "source": "de-identified test split",
              "drafts": {str(i): str(d) for i, d in zip(example_ids, drafts, strict=True)}}
    write_private_atomic(path, json.dumps(record, ensure_ascii=False, sort_keys=True))
    return path


def read_test_drafts(model_dir: str | Path, dataset_version: str) -> dict[str, str]:
    """Example id -> draft written at training time, or {} when there are none for exactly this model folder (its
    manifest) and ``dataset_version``: drafts of other weights are never reused."""
    import json

    path = Path(model_dir) / TEST_DRAFTS_FILE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    if (record.get("format_version") != DRAFTS_RECORD_VERSION or record.get("dataset_version") != dataset_version
            or record.get("manifest_sha256") is None or record["manifest_sha256"] != _manifest_sha256(Path(model_dir))):
        return {}
    return {str(k): str(v) for k, v in record.get("drafts", {}).items()}


@dataclass
class RetrievalNoteBaseline:
    """The train note of the most similar train dialogue of the same language (TF-IDF cosine on character 1-3-grams,
    so that Chinese, which has no spaces, is compared as well as English). Needs nothing but the train split."""

    vectorizer: Any
    matrix: Any
    notes: list[str]
    languages: np.ndarray

    @classmethod
    def fit(cls, dialogues: Sequence[str], notes: Sequence[str], languages: Sequence[str]) -> RetrievalNoteBaseline:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not dialogues:
            raise ValueError("the retrieval baseline needs at least one train pair")
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, lowercase=True)
        return cls(vectorizer, vectorizer.fit_transform(list(dialogues)), list(notes), np.asarray(languages))

    def predict(self, dialogues: Sequence[str], languages: Sequence[str]) -> list[str]:
        if not dialogues:
            return []
        similarity = (self.vectorizer.transform(list(dialogues)) @ self.matrix.T).toarray()  # rows are L2-normalised
        chosen = []
        for row, language in zip(similarity, languages, strict=True):
            same = self.languages == language
            chosen.append(self.notes[int(np.argmax(np.where(same, row, -1.0) if same.any() else row))])
        return chosen


def _score(generated: Sequence[str], gold: Sequence[str], languages: Sequence[str], prefix: str
           ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Overall metrics named ``{prefix}{metric}`` and, per language, the headline ones named ``..._{language}``."""
    from medllm_pipelines.lib.common.structured_note import parse_note
    from medllm_pipelines.lib.evaluate.note_metrics import score_notes

    predicted = [parse_note(text, language=lang) for text, lang in zip(generated, languages, strict=True)]
    reference = [parse_note(text, language=lang) for text, lang in zip(gold, languages, strict=True)]
    overall = score_notes(predicted, reference).as_metrics(prefix)
    by_language: dict[str, dict[str, float]] = {}
    for language in sorted(set(languages)):
        rows = [i for i, lang in enumerate(languages) if lang == language]
        scores = score_notes([predicted[i] for i in rows], [reference[i] for i in rows]).as_metrics(prefix)
        by_language[language] = {f"{prefix}{m}_{language}": scores[f"{prefix}{m}"] for m in PER_LANGUAGE_METRICS}
    return overall, by_language


@dataclass(frozen=True)
class NoteTrainResult:
    """What one training produced: the model folder and how it did on the test split and against the baseline."""

    model_dir: Path
    history: list[dict[str, float]]
    train_seconds: float
    generate_seconds: float
    steps: int
    epochs_run: int
    n_train: int
    n_val: int
    n_test: int
    parameters: int
    vocab_size: int
    tokenizer_sha256: str
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    test_metrics_by_language: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_metrics_by_language: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def best_epoch(self) -> int:
        """The final weights are the kept ones (a fixed step budget, no early stopping): the last epoch."""
        return max(0, self.epochs_run - 1)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["model_dir"] = str(self.model_dir)
        return {**values, "best_epoch": self.best_epoch}


@dataclass(frozen=True)
class NoteSpecTraining:
    """A trained note generator of a spec: where it is, how it did, its MLflow run and registry entry."""

    spec: ModelSpec
    dataset_version: str
    config: Any
    result: NoteTrainResult
    run_id: str
    model_uri: str
    registered: RegisteredModel | None = None
    size: str = "demo"
    # LoRA path only: adapter kind, base folder name and format, SHA-256 of its weights, trainable parameters
    adapter: dict[str, Any] = field(default_factory=dict)

    def record(self, experiment_id: str, dagster_run_id: str) -> dict[str, Any]:
        return {
            "mlflow_run_id": self.run_id, "mlflow_experiment_id": experiment_id, "mlflow_model_uri": self.model_uri,
            "dataset_version": self.dataset_version, "model_dir": str(self.result.model_dir),
            "tokenizer_sha256": self.result.tokenizer_sha256, "dagster_run_id": dagster_run_id, **self.adapter,
            **({"registered_model": self.registered.name, "registered_version": self.registered.version}
               if self.registered else {}),
        }

    def summary(self) -> str:
        r = self.result
        nan = float("nan")
        on = f" (LoRA on {self.adapter.get(BASE_MODEL_TAG)})" if self.adapter else ""
        return (f"trained {self.spec.id}{on}: {r.steps} steps in {r.train_seconds:.1f} s, test field F1 "
                f"{r.test_metrics.get('test_field_f1', nan):.3f} (retrieval "
                f"{r.baseline_metrics.get('baseline_test_field_f1', nan):.3f}), ICD-10 exact "
                f"{r.test_metrics.get('test_icd10_exact_match', nan):.3f}, ROUGE-L "
                f"{r.test_metrics.get('test_rouge_l', nan):.3f} on {r.n_test} test notes")

    def as_metadata(self) -> dict[str, Any]:
        r = self.result

        def rounded(values: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 4) for k, v in values.items()}

        return {
            "trained": True,
            "dataset_version": self.dataset_version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_uri": self.model_uri,
            "network_family": CAUSAL_LM,
            "steps": r.steps,
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "train_seconds": round(r.train_seconds, 2),
            "generate_seconds": round(r.generate_seconds, 2),
            "n_train": r.n_train,
            "n_validation": r.n_val,
            "n_test": r.n_test,
            "parameters": r.parameters,
            "vocab_size": r.vocab_size,
            "tokenizer_sha256": r.tokenizer_sha256,
            "validation_metrics": rounded(r.val_metrics),
            "test_metrics": rounded(r.test_metrics),
            "baseline": self.spec.baseline,
            "baseline_metrics": rounded(r.baseline_metrics),
            "test_metrics_by_language": {k: rounded(v) for k, v in r.test_metrics_by_language.items()},
            "baseline_metrics_by_language": {k: rounded(v) for k, v in r.baseline_metrics_by_language.items()},
            "training_config": self.config.as_params(),
            "training_size": self.size,
            **self.adapter,
            **(self.registered.as_metadata() if self.registered else {}),
        }


def _rows(frame: pd.DataFrame) -> list[tuple[str, str, Any]]:
    from medllm_pipelines.lib.common.structured_note import parse_note

    return [(str(d), str(lang), parse_note(str(n), language=str(lang)))
            for d, n, lang in zip(frame["dialogue"], frame["note"], frame["language"], strict=True)]


def _check_dataset(dataset: SplitDataset, spec: ModelSpec) -> None:
    missing = [c for c in (*DATASET_COLUMNS, "split") if c not in dataset.frame.columns]
    if missing:
        raise ValueError(f"spec {spec.id}: the dataset lacks column(s) {', '.join(missing)}")
    languages = set(dataset.frame["language"].astype(str)) - {"en", "zh"}
    if languages:
        raise ValueError(f"spec {spec.id}: languages must be en or zh, got {sorted(languages)}")
    empty = [name for name, count in dataset.rows_per_split.items() if count == 0]
    if empty:
        raise ValueError(f"spec {spec.id}: the {', '.join(empty)} split(s) hold no pair")


def _steps_in_order(hook: Any) -> Any:
    """An epoch hook whose MLflow step keeps counting across the pretraining and instruction phases."""
    counter = itertools.count()
    return lambda metrics, epoch: hook(metrics, next(counter))


@dataclass(frozen=True)
class _TrainedModel:
    """What either path (GPT from scratch, LoRA on a base) hands to the shared scoring, logging and registration."""

    predictor: Any  # generate_many(dialogues, languages) -> notes
    model_dir: Path
    history: list[dict[str, float]]
    train_seconds: float
    steps: int
    parameters: int
    vocab_size: int
    tokenizer_sha256: str
    python_model: Any
    artifacts: dict[str, str]
    requirements: tuple[str, ...]
    cpu_threads: int = 0
    extra_params: dict[str, Any] = field(default_factory=dict)
    canaries: NoteCanaries | None = None  # GPT path with ``training: canaries``: written after the model is logged


def _log_model(trained: _TrainedModel) -> str:
    """The predictor as an MLflow pyfunc (dialogue and language in, note and ICD-10 codes out); returns its URI."""
    import mlflow
    from mlflow.models import infer_signature

    from medllm_pipelines.lib.train.generative.note_pyfunc import NoteGeneratorModel, input_example
    from medllm_pipelines.lib.train.tracking import pinned_pip_requirements

    example = input_example()
    output = NoteGeneratorModel.predictions(trained.predictor, example)
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_NAME,
        python_model=trained.python_model,
        artifacts=trained.artifacts,
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=[*pinned_pip_requirements(trained.requirements), "mlflow"],
    )
    return info.model_uri


def _train_gpt(dataset: SplitDataset, spec: ModelSpec, config: Any, output_dir: Path, run_id: str,
               canary: CanarySettings | None = None) -> _TrainedModel:
    """The project's GPT from scratch (``canary``: secrets planted in its training notes), saved as a model folder
    and loaded back from it."""
    from medllm_pipelines.lib.train.generative.note_predictor import NoteGeneratorPredictor, save_note_generator
    from medllm_pipelines.lib.train.generative.note_pyfunc import NoteGeneratorModel
    from medllm_pipelines.lib.train.generative.notes import train_note_generator
    from medllm_pipelines.lib.train.tracking import make_mlflow_epoch_logger

    train_frame = dataset.split("train")
    train, validation = _rows(train_frame), _rows(dataset.split("validation"))
    train, canaries = plant_note_canaries(train, canary or CanarySettings(), seed=config.seed, spec_id=spec.id)
    if canaries is not None:
        import mlflow

        mlflow.log_params(canaries.planted.as_metadata(), synchronous=True)  # how many, never the secrets
    pretrain = [*train_frame["dialogue"], *train_frame["note"]] if config.pretrain_steps else []
    generator = train_note_generator(train, validation, config, pretrain_texts=pretrain, spec_id=spec.id,
                                     on_epoch_metrics=_steps_in_order(make_mlflow_epoch_logger(run_id)))
    model_dir = Path(output_dir) / MODEL_DIRNAME
    if model_dir.exists():
        shutil.rmtree(model_dir)
    save_note_generator(generator, model_dir, spec_id=spec.id, dataset_version=dataset.version)
    predictor = NoteGeneratorPredictor.load(model_dir)
    return _TrainedModel(
        predictor=predictor, model_dir=model_dir, history=generator.history, train_seconds=generator.train_seconds,
        steps=config.pretrain_steps + config.steps_for(len(train_frame)), parameters=predictor.network.num_parameters(),
        vocab_size=predictor.tokenizer.get_vocab_size(), tokenizer_sha256=predictor.tokenizer_sha256,
        python_model=NoteGeneratorModel(), artifacts={"model_dir": str(model_dir)},
        requirements=("torch", "tokenizers", "safetensors", "numpy", "pandas"), cpu_threads=config.cpu_threads,
        canaries=canaries)


def _instruction_pairs(frame: pd.DataFrame) -> list[Any]:
    """(prompt, note) pairs with the GPT path's prompt, so that both paths read the same instruction."""
    from medllm_pipelines.lib.train.generative.lora import InstructionPair
    from medllm_pipelines.lib.train.generative.note_text import note_prompt

    return [InstructionPair(note_prompt(str(d), str(lang)), str(n))
            for d, n, lang in zip(frame["dialogue"], frame["note"], frame["language"], strict=True)]


def _tune_lora(dataset: SplitDataset, spec: ModelSpec, config: Any, base: Any, base_sha256: str, output_dir: Path,
               run_id: str) -> _TrainedModel:
    """A LoRA adapter on the operator's base, saved with its ``note_lora.json`` and loaded back (base + adapter)."""
    from medllm_pipelines.lib.train.generative.lora import ADAPTER_DIRNAME, fine_tune_lora
    from medllm_pipelines.lib.train.generative.note_lora import NoteLoraPredictor, write_note_lora_record
    from medllm_pipelines.lib.train.generative.note_pyfunc import NoteLoraGeneratorModel
    from medllm_pipelines.lib.train.tracking import make_mlflow_epoch_logger

    stale = Path(output_dir) / ADAPTER_DIRNAME
    if stale.exists():
        shutil.rmtree(stale)
    train = _instruction_pairs(dataset.split("train"))
    result = fine_tune_lora(base, train, _instruction_pairs(dataset.split("validation")), config.settings,
                            Path(output_dir), spec_id=spec.id, on_epoch_metrics=make_mlflow_epoch_logger(run_id))
    write_note_lora_record(result.adapter_dir, base, config, base_sha256=base_sha256, spec_id=spec.id,
                           dataset_version=dataset.version)
    predictor = NoteLoraPredictor.load(result.adapter_dir)
    steps = config.settings.max_epochs * -(-len(train) // config.settings.batch_size)
    return _TrainedModel(
        predictor=predictor, model_dir=result.adapter_dir, history=result.history.history,
        train_seconds=result.train_seconds, steps=steps, parameters=result.total_parameters,
        vocab_size=len(predictor.tokenizer), tokenizer_sha256=predictor.tokenizer_sha256,
        python_model=NoteLoraGeneratorModel(), artifacts={"adapter_dir": str(result.adapter_dir)},
        requirements=("torch", "transformers", "peft", "tokenizers", "safetensors", "numpy", "pandas"),
        extra_params={"trainable_parameters": result.trainable_parameters,
                      "trainable_share": round(result.trainable_share, 6)})


def train_note_spec_model(
    dataset: SplitDataset,
    spec: ModelSpec,
    output_dir: Path,
    run_id: str,
    *,
    config: Any = None,
    size: str = "demo",
    register: bool = True,
    base_model_path: str | None = None,
) -> NoteSpecTraining:
    """Train ``spec``'s note generator on ``dataset`` (dialogue, note, language, split) in the active run ``run_id``.

    ``config`` (a ``NoteGeneratorConfig``) replaces the spec's at ``size``. With ``base_model_path`` (the asset passes
    ``base_model_path_from_env()``) a LoRA adapter is tuned on that local checkpoint instead, with the spec's
    ``lora:`` block at ``size`` (or ``config`` when it is a ``NoteLoraConfig``); everything else is the same run.
    A base that cannot be used (missing, no weights, no tokenizer, a tokenizer of another model) fails the run like
    a NaN loss: tagged ``failure_reason``, nothing registered. The test split is scored from the saved model
    folder (or adapter), so the figures are those of what is registered.
    """
    import mlflow

    from medllm_pipelines.lib.train.registry import register_model
    from medllm_pipelines.lib.train.text.training import cpu_threads
    from medllm_pipelines.lib.train.tracking import log_dataset_input, log_training_summary, mark_failed

    lora = base_model_path is not None
    if not lora:
        config = config or note_generator_config(spec, size)
    adapter: dict[str, Any] = {}
    base = base_sha256 = None
    try:
        _check_dataset(dataset, spec)
        if lora:
            from medllm_pipelines.lib.train.generative.base_model import inspect_base_model
            from medllm_pipelines.lib.train.generative.note_lora import (
                NoteLoraConfig,
                base_weights_sha256,
                note_lora_config,
            )

            config = config if isinstance(config, NoteLoraConfig) else note_lora_config(spec, size)
            base = inspect_base_model(base_model_path, spec_id=spec.id)
            base_sha256 = base_weights_sha256(base)
            # the folder's name, not the operator's full path (which can carry a user name)
            adapter = {ADAPTER_TAG: LORA_ADAPTER, **base.as_metadata(), "base_model_weights_sha256": base_sha256}
        for split, context in SPLITS:
            log_dataset_input(dataset.split(split)[list(DATASET_COLUMNS)].reset_index(drop=True),
                              name=f"{spec.id}-{split}", dataset_version=dataset.version, context=context,
                              targets="note")
        mlflow.log_params({**{k: str(v) for k, v in config.as_params().items()}, "training_size": size,
                           "dataset_version": dataset.version, "network_family": CAUSAL_LM, **adapter,
                           **{f"n_{k}": v for k, v in dataset.rows_per_split.items()}}, synchronous=True)
        mlflow.set_tags({"dataset_version": dataset.version, "model_family": CAUSAL_LM,
                         **{k: str(adapter[k]) for k in REGISTRY_TAGS if k in adapter}})
        trained = (_tune_lora(dataset, spec, config, base, base_sha256, output_dir, run_id) if lora
                   else _train_gpt(dataset, spec, config, output_dir, run_id, canary_settings(spec, size)))
        adapter.update(trained.extra_params)
        history, predictor = trained.history, trained.predictor
        val_metrics = {"val_loss": float(history[-1]["val_loss"])} if history and "val_loss" in history[-1] else {}
        log_training_summary(best_epoch=max(0, len(history) - 1), epochs_run=len(history), stopped_early=False,
                             train_seconds=trained.train_seconds, kept_metrics=val_metrics)
        mlflow.log_params({"steps": trained.steps, "parameters": trained.parameters,
                           "vocab_size": trained.vocab_size, "tokenizer_sha256": trained.tokenizer_sha256,
                           **trained.extra_params}, synchronous=True)

        train_frame, test = dataset.split("train"), dataset.split("test")
        dialogues, gold = test["dialogue"].astype(str).tolist(), test["note"].astype(str).tolist()
        languages = test["language"].astype(str).tolist()
        started = time.perf_counter()
        with cpu_threads(trained.cpu_threads):
            generated = predictor.generate_many(dialogues, languages)
        generate_seconds = time.perf_counter() - started
        test_metrics, test_by_language = _score(generated, gold, languages, "test_")
        baseline = RetrievalNoteBaseline.fit(train_frame["dialogue"].astype(str).tolist(),
                                             train_frame["note"].astype(str).tolist(),
                                             train_frame["language"].astype(str).tolist())
        baseline_metrics, baseline_by_language = _score(baseline.predict(dialogues, languages), gold, languages,
                                                        "baseline_test_")
        per_language = {k: v for values in (*test_by_language.values(), *baseline_by_language.values())
                        for k, v in values.items()}
        mlflow.log_metrics({**test_metrics, **baseline_metrics, **per_language,
                            "generate_seconds_per_note": generate_seconds / len(generated)}, synchronous=True)
        result = NoteTrainResult(
            model_dir=trained.model_dir, history=history, train_seconds=trained.train_seconds,
            generate_seconds=generate_seconds, steps=trained.steps, epochs_run=len(history),
            n_train=len(train_frame), n_val=len(dataset.split("validation")), n_test=len(test),
            parameters=trained.parameters, vocab_size=trained.vocab_size, tokenizer_sha256=trained.tokenizer_sha256,
            val_metrics=val_metrics, test_metrics=test_metrics, baseline_metrics=baseline_metrics,
            test_metrics_by_language=test_by_language, baseline_metrics_by_language=baseline_by_language)
        model_uri = _log_model(trained)
        if trained.canaries is not None:  # after logging: the secrets stay out of the MLflow model
            write_canary_record(trained.model_dir, trained.canaries)
        if not lora and ID_COLUMN in test.columns:  # the evaluation spot-checks these instead of writing them again
            write_test_drafts(trained.model_dir, test[ID_COLUMN].astype(str).tolist(), generated, dataset.version)
        mlflow.log_dict(result.to_dict(), TRAINING_SUMMARY_ARTIFACT)
        # Notes of the de-identified test split (the dataset the model sees), never raw records.
        mlflow.log_dict({"source": "de-identified test split", "dataset_version": dataset.version, "examples": [
            {"language": lang, "gold": g, "generated": out}
            for g, out, lang in list(zip(gold, generated, languages, strict=True))[:EXAMPLES_LOGGED]]},
            EXAMPLES_ARTIFACT)
        registered = None
        if register:
            registered = register_model(model_uri, spec.id, family=CAUSAL_LM, dataset_version=dataset.version,
                                        metrics={**test_metrics, **val_metrics},
                                        tracking_uri=mlflow.get_tracking_uri())
            _tag_version(registered, {k: str(adapter[k]) for k in REGISTRY_TAGS if k in adapter})
    except Exception as failure:
        mark_failed(f"{type(failure).__name__}: {failure}")
        raise
    return NoteSpecTraining(spec, dataset.version, config, result, run_id, model_uri, registered, size, adapter)


def _tag_version(registered: RegisteredModel, tags: dict[str, str]) -> None:
    """Tags on the registered version (which base, which kind of adapter): `medllm models` lists them."""
    if not tags:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for key, value in tags.items():
        client.set_model_version_tag(registered.name, registered.version, key, value)
