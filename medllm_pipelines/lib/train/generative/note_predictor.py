"""A trained note generator as a model folder, and loading it back: torch, safetensors and tokenizers only.

The folder holds the network weights (``network.safetensors``: no pickled code runs on load), the tokenizer it was
trained with, ``note_generator.json`` (network shape, decoding length, training config, spec, dataset version) and
``manifest.json`` with the SHA-256 of each of those files. Loading refuses a folder whose bytes differ from its
manifest and a tokenizer whose vocabulary is not the embedding's (``TokenizerMismatchError``), each naming the cause.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.structured_note import StructuredNote, parse_note
from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig
from medllm_pipelines.lib.train.generative.note_text import generate_note_text
from medllm_pipelines.lib.train.text.tokenizer import TOKENIZER_FILE, check_tokenizer_matches, tokenizer_sha256

WEIGHTS_FILE = "network.safetensors"
CONFIG_FILE = "note_generator.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
NOTE_GENERATION_TASK = "note_generation"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class ModelFolderError(ValueError):
    """A note generator folder that is incomplete, of another format, or whose files differ from its manifest."""


def save_note_generator(generator: Any, model_dir: str | Path, *, spec_id: str = "",
                        dataset_version: str | None = None) -> Path:
    """Write ``generator`` (a ``notes.NoteGenerator``) to ``model_dir`` (replaced files: weights, tokenizer, config,
    manifest); the manifest is written last, so a folder interrupted mid-write never loads."""
    from safetensors.torch import save_model

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MANIFEST_FILE).unlink(missing_ok=True)
    network = generator.network.cpu().eval()
    save_model(network, str(model_dir / WEIGHTS_FILE))  # tied embedding/head weights stored once
    (model_dir / TOKENIZER_FILE).write_text(generator.tokenizer.to_str(pretty=False))
    config = {
        "format_version": FORMAT_VERSION, "task": NOTE_GENERATION_TASK, "spec_id": spec_id,
        "dataset_version": dataset_version, "network": network.config.as_dict(),
        "max_new_tokens": int(generator.config.max_new_tokens), "training_config": generator.config.as_params(),
        "parameters": network.num_parameters(), "python": platform.python_version(),
    }
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest = {"format_version": FORMAT_VERSION, "task": NOTE_GENERATION_TASK,
                "sha256": {name: sha256_file(model_dir / name) for name in (WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE)}}
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return model_dir


@dataclass
class NoteGeneratorPredictor:
    """Dialogues in, notes out (greedy, so the same dialogue always gives the same note)."""

    network: GPT
    tokenizer: Any
    config: dict[str, Any]

    @classmethod
    def load(cls, model_dir: str | Path) -> NoteGeneratorPredictor:
        """Rebuild from ``model_dir`` after checking every file against the manifest's SHA-256."""
        from safetensors.torch import load_model
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        manifest_path = model_dir / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ModelFolderError(f"{model_dir} holds no {MANIFEST_FILE}: not a saved note generator, or its save "
                                   "was interrupted")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION or manifest.get("task") != NOTE_GENERATION_TASK:
            raise ModelFolderError(f"{model_dir} does not hold a note generator of format {FORMAT_VERSION}")
        for name in (WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE):
            path = model_dir / name
            if not path.is_file():
                raise ModelFolderError(f"{model_dir} lacks {name}, which its manifest lists")
            if sha256_file(path) != manifest["sha256"].get(name):
                raise ModelFolderError(f"{path} does not match the SHA-256 in {MANIFEST_FILE}: the file was changed "
                                       "after the model was saved")
        config = json.loads((model_dir / CONFIG_FILE).read_text())
        network = GPT(GPTConfig(**config["network"]))
        tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        check_tokenizer_matches(tokenizer, network.token_embedding.num_embeddings, spec_id=config.get("spec_id", ""),
                                where=str(model_dir))
        load_model(network, str(model_dir / WEIGHTS_FILE), strict=True, device="cpu")
        return cls(network.eval(), tokenizer, config)

    @property
    def tokenizer_sha256(self) -> str:
        return tokenizer_sha256(self.tokenizer)

    def generate(self, dialogue_text: str, language: str) -> str:
        return generate_note_text(self.network, self.tokenizer, dialogue_text, language,
                                  max_new_tokens=int(self.config["max_new_tokens"]))

    def generate_note(self, dialogue_text: str, language: str) -> StructuredNote:
        return parse_note(self.generate(dialogue_text, language), language=language)

    def generate_many(self, dialogues: Sequence[str], languages: Sequence[str]) -> list[str]:
        return [self.generate(text, language) for text, language in zip(dialogues, languages, strict=True)]
