"""The note generator's network and training system: causal, learns, counts its FLOPs; the GPU benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig, flops_per_token
from medllm_pipelines.lib.train.generative.system import (
    IGNORE_INDEX,
    CausalLMSystem,
    CausalLMTraining,
    TokenBlockDataModule,
    TokenBlocks,
    cosine_with_warmup,
    next_token_loss,
)

ROOT = Path(__file__).resolve().parents[3]
TINY = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_a_token_never_sees_the_tokens_after_it() -> None:
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    tokens = torch.randint(0, TINY.vocab_size, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % TINY.vocab_size
    before, after = model(tokens), model(changed)
    assert torch.allclose(before[0, :8], after[0, :8], atol=1e-6)
    assert not torch.allclose(before[0, 8:], after[0, 8:])


def test_gpt2_small_has_124m_parameters_and_its_flops_follow_palm() -> None:
    config = GPTConfig.gpt2_small()
    with torch.device("meta"):
        model = GPT(config)
    parameters = model.num_parameters()
    assert 123_000_000 < parameters < 125_000_000
    assert flops_per_token(config, parameters) == 6 * parameters + 12 * 12 * 768 * 1024


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(dropout=1.0), dict(n_layer=0)])
def test_an_impossible_shape_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="GPTConfig"):
        GPTConfig(**bad)


def test_a_sequence_longer_than_the_block_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than the block size"):
        GPT(TINY)(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_prompt_tokens_marked_ignore_do_not_count_in_the_loss() -> None:
    logits = torch.randn(1, 4, 8)
    targets = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 5]])
    expected = torch.nn.functional.cross_entropy(logits[0, 2:], targets[0, 2:])
    assert torch.isclose(next_token_loss(logits, targets), expected)


def test_the_schedule_warms_up_then_decays_to_its_floor() -> None:
    values = [cosine_with_warmup(step, 10, 100, 0.1) for step in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(values[10:], values[11:]))


def test_blocks_pair_inputs_with_targets_shifted_by_one() -> None:
    blocks = TokenBlocks(list(range(20)), block_size=4)
    assert len(blocks) == 4
    inputs, targets = blocks[1]
    assert inputs.tolist() == [4, 5, 6, 7] and targets.tolist() == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="cannot fill one block"):
        TokenBlocks([1, 2], block_size=4)


def test_the_lightning_system_learns_a_repeating_stream_and_generates_it() -> None:
    L.seed_everything(3, workers=True)
    pattern = [1, 2, 3, 4, 5, 6, 7, 8]
    stream = pattern * 40
    system = CausalLMSystem(TINY, CausalLMTraining(lr=3e-3, warmup_steps=5, max_steps=60, weight_decay=0.0))
    before = next_token_loss(system(torch.tensor([stream[:16]])), torch.tensor([stream[1:17]])).item()
    trainer = L.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    trainer.fit(system, datamodule=TokenBlockDataModule(stream, stream[:64], TINY.block_size, batch_size=4))
    system.eval()
    after = next_token_loss(system(torch.tensor([stream[:16]])), torch.tensor([stream[1:17]])).item()
    assert after < before / 4
    continued = system.network.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=6)
    assert continued[0, 3:].tolist() == [6, 7, 8, 1, 2, 3]
    assert "val_loss" in trainer.callback_metrics


def test_the_gpu_benchmark_runs_both_loops_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_train.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--device", "cpu", "--tiny",
                    "--no-compile", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["plain"]["tokens_per_s"] > 0 and result["lightning"]["tokens_per_s"] > 0
    assert result["lightning_over_plain"] > 0 and result["parameters"] > 0


def test_instruction_tuning_learns_the_responses_and_never_the_prompts() -> None:
    from medllm_pipelines.lib.train.generative.system import InstructionDataModule, instruction_example

    bos, eos, pad = 1, 2, 0
    pairs = [([5, 6, 7], [20, 21, 22]), ([8, 9, 7], [23, 24]), ([10, 11, 12, 7], [25, 20, 26])]
    examples = [instruction_example(p, r, bos_id=bos, eos_id=eos, max_length=TINY.block_size + 1) for p, r in pairs]
    assert examples[0]["labels"] == [IGNORE_INDEX] * 4 + [20, 21, 22, eos]
    data = InstructionDataModule(examples, examples, batch_size=3, pad_id=pad, seed=3)
    inputs, targets = next(iter(data.train_dataloader()))
    assert inputs.shape == targets.shape and (targets[inputs == pad] == IGNORE_INDEX).all()
    L.seed_everything(3, verbose=False)
    system = CausalLMSystem(TINY, CausalLMTraining(lr=3e-2, warmup_steps=2, max_steps=120, weight_decay=0.0))
    trainer = L.Trainer(max_steps=120, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(system, datamodule=data)
    system.network.eval()
    for prompt, response in pairs:
        out = system.network.generate(torch.tensor([[bos, *prompt]]), max_new_tokens=6, eos_id=eos)
        assert out[0, len(prompt) + 1:].tolist()[:len(response) + 1] == [*response, eos]


def test_an_overlong_pair_keeps_the_response_and_the_end_of_the_prompt() -> None:
    from medllm_pipelines.lib.train.generative.system import instruction_example

    example = instruction_example(list(range(10, 30)), [5, 6], bos_id=1, eos_id=2, max_length=8)
    assert example["input_ids"] == [1, 26, 27, 28, 29, 5, 6, 2]
    assert example["labels"][-3:] == [5, 6, 2]
