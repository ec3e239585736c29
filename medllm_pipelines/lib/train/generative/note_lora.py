"""The note generator as a LoRA adapter on the operator's base checkpoint: its spec block, its folder, its predictor.

When ``MEDLLM_BASE_MODEL_PATH`` is set, ``note_runs.train_note_spec_model`` tunes an adapter (``lora.fine_tune_lora``)
on the same (dialogue -> note) pairs, with the prompt of the GPT path (``note_text.note_prompt``), instead of training
the project's GPT. The spec's ``lora:`` block (its ``full:`` sub-block overriding it at full size) gives the adapter's
shape and training and the decoding length. The adapter folder holds ``note_lora.json``: the base folder's path,
its name and the SHA-256 of its weight files, so that ``NoteLoraPredictor.load`` refuses a base whose weights are not
those the adapter was trained on. The base itself is never copied: the serving host needs the same checkpoint at the
same path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.train.generative.base_model import BaseModelError, BaseModelFolder, inspect_base_model
from medllm_pipelines.lib.train.generative.lora import LoraSettings

NOTE_LORA_FILE = "note_lora.json"
FORMAT_VERSION = 1
NOTE_GENERATION_TASK = "note_generation"
LORA_BLOCK = "lora"
DECODING_KEYS = ("max_new_tokens",)
LORA_KEYS = (*(f.name for f in dataclasses.fields(LoraSettings)), *DECODING_KEYS)
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class NoteLoraConfig:
    """How the adapter is shaped and trained (``LoraSettings``) and how long a generated note may be."""

    settings: LoraSettings
    max_new_tokens: int = 160

    def __post_init__(self) -> None:
        if not 0 < self.max_new_tokens < self.settings.max_length:
            raise ValueError(f"NoteLoraConfig: need 0 < max_new_tokens ({self.max_new_tokens}) < max_length "
                             f"({self.settings.max_length}), so that a prompt keeps some room")

    def as_params(self) -> dict[str, Any]:
        return {**self.settings.as_params(), "max_new_tokens": self.max_new_tokens}


def _checked(spec_id: str, key: str, value: Any, default: Any) -> Any:
    if key == "target_modules":
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise ValueError(f"spec {spec_id}: lora.target_modules must be a module name pattern or a list of names, "
                         f"got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"spec {spec_id}: lora.{key} must be true or false, got {value!r}")
        return value
    integer = isinstance(default, int)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise ValueError(f"spec {spec_id}: lora.{key} must be a{'n integer' if integer else ' number'}, got {value!r}")
    return type(default)(value)


def note_lora_config(spec: Any, size: str = "demo", block: Mapping[str, Any] | None = None) -> NoteLoraConfig:
    """The spec's ``lora:`` block at ``size`` (``block`` replaces the file's); refusals name the spec and the key."""
    from medllm_pipelines.lib.curate.spec import FULL_SIZE, TRAINING_SIZES

    if size not in TRAINING_SIZES:
        raise ValueError(f"spec {spec.id}: training size {size!r} is not one of {', '.join(TRAINING_SIZES)}")
    block = spec.lora if block is None else block
    if not isinstance(block, Mapping) or not block:
        raise ValueError(f"spec {spec.id}: declares no {LORA_BLOCK}: block (the adapter's settings), needed when "
                         "MEDLLM_BASE_MODEL_PATH is set")
    full = block.get("full") or {}
    if not isinstance(full, Mapping):
        raise ValueError(f"spec {spec.id}: {LORA_BLOCK}.full must be a mapping")
    values = {**{k: v for k, v in block.items() if k != "full"}, **(full if size == FULL_SIZE else {})}
    unknown = sorted(set(values) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"spec {spec.id}: unknown {LORA_BLOCK} key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(LORA_KEYS)}")
    defaults = {**{f.name: f.default for f in dataclasses.fields(LoraSettings)},
                "max_new_tokens": NoteLoraConfig.max_new_tokens}
    checked = {key: _checked(spec.id, key, value, defaults[key]) for key, value in values.items()}
    try:
        return NoteLoraConfig(LoraSettings(**{k: v for k, v in checked.items() if k not in DECODING_KEYS}),
                              **{k: v for k, v in checked.items() if k in DECODING_KEYS})
    except ValueError as error:
        raise ValueError(f"spec {spec.id}: {error}") from error


def base_weights_sha256(folder: BaseModelFolder) -> str:
    """One SHA-256 over the base's weight files (name and content, in name order): which checkpoint was tuned."""
    digest = hashlib.sha256()
    for name in folder.weight_files:
        file_digest = hashlib.sha256()
        with (folder.path / name).open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                file_digest.update(chunk)
        digest.update(f"{name}\t{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def write_note_lora_record(adapter_dir: Path, base: BaseModelFolder, config: NoteLoraConfig, *, base_sha256: str,
                           spec_id: str, dataset_version: str) -> Path:
    """``note_lora.json`` beside the adapter: what the predictor needs to rebuild base + adapter elsewhere."""
    record = {
        "format_version": FORMAT_VERSION, "task": NOTE_GENERATION_TASK, "spec_id": spec_id,
        "dataset_version": dataset_version, "base_model": base.path.name,
        "base_model_path": str(base.path.resolve()), "base_model_weights_sha256": base_sha256,
        "base_model_format": "gguf" if base.gguf_file else "transformers", "max_new_tokens": config.max_new_tokens,
        "max_length": config.settings.max_length, "add_bos": config.settings.add_bos, "lora": config.as_params(),
    }
    path = Path(adapter_dir) / NOTE_LORA_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


@dataclass
class NoteLoraPredictor:
    """Dialogues in, notes out, from the base with the adapter merged (greedy: the same dialogue, the same note)."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]

    @classmethod
    def load(cls, adapter_dir: str | Path) -> NoteLoraPredictor:
        """Base (from the recorded path, its weights checked against the recorded SHA-256) + the adapter."""
        from medllm_pipelines.lib.train.generative.lora import load_tuned_model

        adapter_dir = Path(adapter_dir)
        record_path = adapter_dir / NOTE_LORA_FILE
        if not record_path.is_file():
            raise ValueError(f"{adapter_dir} holds no {NOTE_LORA_FILE}: not a note generator adapter")
        config = json.loads(record_path.read_text())
        if config.get("format_version") != FORMAT_VERSION or config.get("task") != NOTE_GENERATION_TASK:
            raise ValueError(f"{adapter_dir} does not hold a note generator adapter of format {FORMAT_VERSION}")
        spec_id = str(config.get("spec_id", ""))
        base = inspect_base_model(config["base_model_path"], spec_id=spec_id)
        found = base_weights_sha256(base)
        if found != config["base_model_weights_sha256"]:
            raise BaseModelError(spec_id, base.path, "holds other weights than the adapter was tuned on (SHA-256 "
                                 f"{found[:12]}..., expected {config['base_model_weights_sha256'][:12]}...)")
        model, tokenizer = load_tuned_model(base, adapter_dir, spec_id=spec_id)
        return cls(model, tokenizer, config)

    @property
    def tokenizer_sha256(self) -> str:
        from medllm_pipelines.lib.train.text.tokenizer import tokenizer_sha256

        return tokenizer_sha256(self.tokenizer.backend_tokenizer)

    def generate(self, dialogue_text: str, language: str) -> str:
        import torch

        from medllm_pipelines.lib.train.generative.note_text import note_prompt

        tokenizer, max_new_tokens = self.tokenizer, int(self.config["max_new_tokens"])
        bos = tokenizer.bos_token_id if self.config.get("add_bos", True) else None
        ids = tokenizer(note_prompt(dialogue_text, language), add_special_tokens=False)["input_ids"]
        # as in training, a prompt too long loses the start of the dialogue, never the cue before the note
        room = int(self.config["max_length"]) - max_new_tokens - (bos is not None)
        ids = [*([bos] if bos is not None else []), *ids[max(0, len(ids) - room):]]
        inputs = torch.tensor([ids])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            output = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                         do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        return tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)

    def generate_many(self, dialogues: Sequence[str], languages: Sequence[str]) -> list[str]:
        return [self.generate(text, language) for text, language in zip(dialogues, languages, strict=True)]
