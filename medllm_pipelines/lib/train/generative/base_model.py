"""The operator-supplied base model: a Hugging Face checkpoint in a local directory, never a download.

``MEDLLM_BASE_MODEL_PATH`` names a folder written by ``save_pretrained`` (``config.json``, weights as
``*.safetensors`` or ``pytorch_model*.bin``, and the tokenizer's files) or a folder holding one ``*.gguf`` file
(transformers dequantises GGUF on load, with the ``gguf`` package). ``inspect_base_model`` refuses a path that
does not exist, holds no weights or no tokenizer, with a message naming the spec and the cause, before any run
opens; ``load_base_model`` loads with ``local_files_only`` so that a missing file is an error here, not a
download attempt; ``check_tokenizer_matches`` refuses a tokenizer whose ids the model cannot embed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.train.text.tokenizer import TokenizerMismatchError

BASE_MODEL_ENV = "MEDLLM_BASE_MODEL_PATH"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class BaseModelError(ValueError):
    """The base-model folder cannot be used: the message names the spec, the folder and what is wrong."""

    def __init__(self, spec_id: str, path: Path | str, cause: str) -> None:
        self.spec_id = spec_id
        self.path = str(path)
        self.cause = cause
        where = f"spec {spec_id}" if spec_id else "base model"
        super().__init__(f"{where}: base model at {path} {cause}")


@dataclass(frozen=True)
class BaseModelFolder:
    """What a checked base-model folder holds."""

    path: Path
    weight_files: tuple[str, ...]
    gguf_file: str | None
    has_config: bool

    def as_metadata(self) -> dict[str, Any]:
        # the folder name only: an operator's path can carry a user name
        return {"base_model": self.path.name, "base_model_weight_files": len(self.weight_files),
                "base_model_format": "gguf" if self.gguf_file else "transformers"}


def base_model_path_from_env() -> str | None:
    """``MEDLLM_BASE_MODEL_PATH`` read when called (never at import), None when unset or blank: the one place the
    variable is read, so that the asset passes the path on and ``lib`` code takes it as an argument."""
    value = os.environ.get(BASE_MODEL_ENV, "").strip()
    return value or None


def inspect_base_model(path: str | os.PathLike | None, *, spec_id: str = "") -> BaseModelFolder:
    """Check that ``path`` is a usable local checkpoint; BaseModelError with the cause otherwise."""
    if path is None or str(path).strip() == "":
        raise BaseModelError(spec_id, "(unset)", f"is not configured: set {BASE_MODEL_ENV} to a local directory")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise BaseModelError(spec_id, folder, "does not exist (nothing is downloaded: copy the checkpoint there)")
    if not folder.is_dir():
        raise BaseModelError(spec_id, folder, "is not a directory (give the folder save_pretrained wrote)")
    weights = tuple(sorted({p.name for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()
                            and p.stat().st_size > 0}))
    if not weights:
        raise BaseModelError(spec_id, folder, f"holds no weights (none of {', '.join(WEIGHT_PATTERNS)})")
    gguf = next((name for name in weights if name.endswith(".gguf")), None)
    has_config = (folder / "config.json").is_file()
    if gguf is None and not has_config:
        raise BaseModelError(spec_id, folder, "holds weights but no config.json")
    if gguf is None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BaseModelError(spec_id, folder, f"holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    return BaseModelFolder(folder, weights, gguf, has_config)


@contextmanager
def offline() -> Iterator[None]:
    """Hugging Face libraries never reach the network inside this block, whatever the environment says."""
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({name: "1" for name in saved})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_base_model(folder: BaseModelFolder, *, spec_id: str = "", dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from the checked folder, offline; float32 on the CPU unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    extra = {"gguf_file": folder.gguf_file} if folder.gguf_file else {}
    # packed GGUF blocks cannot be trained or saved: unpack them into a plain dense model
    quantization = {"quantization_config": GgufConfig(dequantize=True)} if folder.gguf_file else {}
    with offline():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder.path, local_files_only=True, **extra)
            model = AutoModelForCausalLM.from_pretrained(folder.path, local_files_only=True,
                                                         dtype=dtype or torch.float32, **extra, **quantization)
        except (OSError, ValueError, KeyError) as error:  # transformers' errors for unreadable folders
            raise BaseModelError(spec_id, folder.path, f"cannot be loaded: {type(error).__name__}: {error}") from None
    check_tokenizer_matches(model, tokenizer, spec_id=spec_id)
    if folder.gguf_file:  # dense now: drop the GGUF loading record so that save_pretrained accepts the model
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
    if tokenizer.pad_token is None:  # decoder-only checkpoints often ship none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_dense_copy(model: Any, tokenizer: Any, target: Path, *, dtype: Any = None) -> Path:
    """Write ``model`` (bf16 by default) and its tokenizer as a plain ``save_pretrained`` folder: a GGUF base is
    dequantised once (minutes) and reloads from the copy in well under a second."""
    import torch

    target = Path(target)
    model.to(dtype or torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def check_tokenizer_matches(model: Any, tokenizer: Any, *, spec_id: str = "") -> None:
    """TokenizerMismatchError when the tokenizer's ids run past the model's embedding table."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        where = f"spec {spec_id}" if spec_id else "base model"
        raise TokenizerMismatchError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}: "
            "it belongs to another model (save the checkpoint's own tokenizer beside it)")
