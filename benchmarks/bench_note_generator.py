"""The from-scratch note generator against the issue-11 target (field-level F1 >= 0.85 on held-out pairs).

Generated consultation and ward-round pairs (lib/synth/consultations.py, Chinese and English), a word-level
tokenizer counted on the training pairs, the project's GPT instruction-tuned on them
(lib/train/generative/notes.py), greedy decoding of held-out pairs, scored field by field
(lib/evaluate/note_metrics.py). CPU, one process; the sizes below are the arguments.

    .venv/bin/python benchmarks/bench_note_generator.py                  # writes results/note_generator.json
    .venv/bin/python benchmarks/bench_note_generator.py --quick          # small, nothing written
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=1200)
    parser.add_argument("--test-pairs", type=int, default=80)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_pairs, args.test_pairs, args.steps, args.width, args.layers = 120, 10, 60, 48, 2

    import torch

    from medllm_pipelines.lib.common.structured_note import render_note
    from medllm_pipelines.lib.evaluate.note_metrics import score_notes
    from medllm_pipelines.lib.synth.consultations import KINDS, build_consultations
    from medllm_pipelines.lib.synth.determinism import stream
    from medllm_pipelines.lib.common.structured_note import parse_note
    from medllm_pipelines.lib.train.generative.note_runs import RetrievalNoteBaseline
    from medllm_pipelines.lib.train.generative.notes import NoteGeneratorConfig, train_note_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = build_consultations(args.train_pairs + 20 + args.test_pairs, stream(2026, "bench-notes"), kinds=KINDS)
    rows = [(p.dialogue_text(), p.language, p.note) for p in pairs]
    train, validation, test = rows[:args.train_pairs], rows[args.train_pairs:args.train_pairs + 20], \
        rows[args.train_pairs + 20:]
    config = NoteGeneratorConfig(n_layer=args.layers, n_head=4, n_embd=args.width, block_size=512,
                                 instruction_steps=args.steps, batch_size=16, lr=2e-3, warmup_steps=50,
                                 max_new_tokens=200, seed=7)
    generator = train_note_generator(train, validation, config)
    started = time.perf_counter()
    predicted = [generator.generate_note(text, language) for text, language, _ in test]
    generate_seconds = time.perf_counter() - started
    scores = score_notes(predicted, [note for *_, note in test])
    by_language = {lang: score_notes([p for p, (_, l, _) in zip(predicted, test) if l == lang],
                                     [n for _, l, n in test if l == lang]).as_metrics()
                   for lang in ("en", "zh")}
    retrieval = RetrievalNoteBaseline.fit([t for t, _, _ in train], [render_note(n) for *_, n in train],
                                          [lang for _, lang, _ in train])
    retrieved = retrieval.predict([t for t, _, _ in test], [lang for _, lang, _ in test])
    baseline = score_notes([parse_note(text, language=lang) for text, (_, lang, _) in zip(retrieved, test, strict=True)],
                           [note for *_, note in test])
    result = {
        "benchmark": "note_generator", "machine": platform.platform(), "threads": torch.get_num_threads(),
        "train_pairs": len(train), "test_pairs": len(test), "kinds": list(KINDS), "config": config.as_params(),
        "parameters": generator.network.num_parameters(), "vocabulary": generator.tokenizer.get_vocab_size(),
        "train_seconds": round(generator.train_seconds, 1), "generate_seconds_per_note": round(generate_seconds / len(test), 2),
        "final_train_loss": generator.history[-1].get("train_loss") if generator.history else None,
        "final_val_loss": generator.history[-1].get("val_loss") if generator.history else None,
        "scores": scores.as_metrics(), "scores_by_language": by_language, "target_field_f1": 0.85,
        "retrieval_baseline_scores": baseline.as_metrics(),
        "example": {"gold": render_note(test[0][2]), "generated": generator.generate(test[0][0], test[0][1])},
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "note_generator.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
