"""Triage encoder with the whole-word tokenizer vs the WordPiece fallback (issue 11), ~950 generated dialogues, CPU.

The same labelled dialogues, splits and held-out persons as benchmarks/bench_triage_distillation.py
(lib/synth/dialogues.py, the curate splitter, the tokenizer trained without the validation and test
persons); for each tokenizer variant of lib/train/text/tokenizer.yaml (``wordlevel``; ``wordpiece``: whole
words plus ``##`` endings; ``wordpiece`` with ``split_inflections``; ``wordpiece`` with single letters as a
last resort) and each seed, the triage spec's encoder at demo size is trained and scored on the test split
and on the hand-written dialogues (lib/train/text/heldout_triage.yaml, read only, as train/triage_model
scores them). Also the unknown-token rate and tokens per text on the hand-written texts.

    .venv/bin/python benchmarks/bench_triage_tokenizer.py                 # writes benchmarks/results/triage_tokenizer.json
    .venv/bin/python benchmarks/bench_triage_tokenizer.py --quick         # ~300 dialogues, one seed, nothing written
    .venv/bin/python benchmarks/bench_triage_tokenizer.py --variants wordlevel wordpiece --seeds 7 8 --output a.json
    .venv/bin/python benchmarks/bench_triage_tokenizer.py --merge a.json b.json   # parts run in parallel, as one file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS: dict[str, dict[str, Any]] = {
    "wordlevel": {"model": "wordlevel"},
    "wordpiece": {"model": "wordpiece", "split_inflections": False, "character_fallback": False},
    "wordpiece_split_inflections": {"model": "wordpiece", "split_inflections": True, "character_fallback": False},
    "wordpiece_character_fallback": {"model": "wordpiece", "split_inflections": False, "character_fallback": True},
}
SCORES = ("test_accuracy", "test_accuracy_en", "test_accuracy_zh", "heldout_written_accuracy",
          "heldout_written_accuracy_en", "heldout_written_accuracy_zh")


def tokenizer_figures(tokenizer: Any, written: Any) -> dict[str, Any]:
    from medllm_pipelines.lib.train.text.tokenizer import unknown_rate

    figures: dict[str, Any] = {"vocab_size": tokenizer.get_vocab_size()}
    for language, group in written.groupby("language", sort=True):
        rate, tokens = unknown_rate(tokenizer, group["text"].tolist())
        figures[f"heldout_written_unknown_rate_{language}"] = round(rate, 4)
        figures[f"heldout_written_tokens_per_text_{language}"] = round(tokens / len(group), 1)
    return figures


def run(plans_per_language: int, variants: list[str], seeds: list[int], work: Path) -> dict[str, Any]:
    from bench_triage_distillation import dialogue_frame

    from medllm_pipelines.lib.curate.datasets_text import split_texts
    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
    from medllm_pipelines.lib.train.text.runs import (
        load_written_dialogues,
        spec_classes,
        text_training_config,
        written_dialogue_metrics,
    )
    from medllm_pipelines.lib.train.text.tokenizer import held_out_persons, load_tokenizer_config, train_tokenizer
    from medllm_pipelines.lib.train.text.training import train_text_classifier

    spec = load_spec("triage")
    texts = dialogue_frame(plans_per_language)
    splits = split_texts(texts, spec.split_config).splits
    frame = texts.merge(splits[["text_id", "split"]], on="text_id")
    written = load_written_dialogues()
    base_config = load_tokenizer_config()
    demo = text_training_config(spec, "demo")
    results: dict[str, Any] = {}
    for name in variants:
        config = dataclasses.replace(base_config, **VARIANTS[name])
        tokenizer = train_tokenizer(frame.assign(source="dialogues"), config,
                                    excluded_persons=held_out_persons(splits)).tokenizer
        runs = []
        for seed in seeds:
            started = time.perf_counter()
            result = train_text_classifier(frame, tokenizer, spec_classes(spec), dataclasses.replace(demo, seed=seed),
                                           work / f"{name}-{seed}", spec_id=spec.id)
            heldout = written_dialogue_metrics(TextClassifierPredictor.load(result.model_dir), written)
            scores = {"test_accuracy": result.test_metrics["test_accuracy"],
                      **{f"test_accuracy_{k}": v for k, v in result.test_accuracy_by_language.items()}, **heldout}
            runs.append({"seed": seed, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                         "train_seconds": round(time.perf_counter() - started, 1),
                         **{k: round(float(v), 4) for k, v in scores.items() if k in SCORES}})
            print(name, runs[-1], flush=True)
        results[name] = {
            "tokenizer": {k: v for k, v in VARIANTS[name].items()}, **tokenizer_figures(tokenizer, written),
            "mean": {k: round(statistics.fmean(r[k] for r in runs), 4) for k in SCORES if all(k in r for r in runs)},
            "runs": runs,
        }
    return {
        "dialogues": len(frame), "rows_per_split": frame["split"].value_counts().to_dict(),
        "languages": frame["language"].value_counts().to_dict(),
        "heldout_written": {"version": written.attrs.get("version", ""), "by_language":
                            written["language"].value_counts().to_dict()},
        "tokenizer_config_version": base_config.version, "seeds": seeds,
        "training": {k: v for k, v in dataclasses.asdict(demo).items()
                     if k in ("d_model", "n_layers", "max_length", "max_epochs", "token_dropout")},
        "variants": results,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of this script on the same dialogues (other variants or seeds, e.g. in parallel) as one result."""
    merged = {k: v for k, v in parts[0].items() if k not in ("variants", "seeds")}
    variants: dict[str, Any] = {}
    for part in parts:
        if part["dialogues"] != merged["dialogues"] or part["rows_per_split"] != merged["rows_per_split"]:
            raise ValueError("the parts were not run on the same dialogues and splits")
        for name, variant in part["variants"].items():
            into = variants.setdefault(name, {**variant, "runs": []})
            into["runs"] = sorted([*into["runs"], *variant["runs"]], key=lambda r: r["seed"])
    for variant in variants.values():
        runs = variant["runs"]
        variant["mean"] = {k: round(statistics.fmean(r[k] for r in runs), 4) for k in SCORES if all(k in r for r in runs)}
        variant["stdev"] = {k: round(statistics.stdev(r[k] for r in runs), 4) for k in SCORES
                            if len(runs) > 1 and all(k in r for r in runs)}
    versions = sorted({part["tokenizer_config_version"] for part in parts})
    merged["tokenizer_config_version"] = versions[0] if len(versions) == 1 else versions
    merged["seeds"] = sorted({r["seed"] for v in variants.values() for r in v["runs"]})
    merged["variants"] = {name: variants[name] for name in VARIANTS if name in variants}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~300 dialogues and one seed; nothing written")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 8])
    parser.add_argument("--output", type=Path, default=RESULTS / "triage_tokenizer.json")
    parser.add_argument("--merge", nargs="+", type=Path, help="combine these results of earlier runs into --output")
    args = parser.parse_args()
    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
        args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(json.dumps({k: v["mean"] for k, v in result["variants"].items()}, indent=2))
        return
    with tempfile.TemporaryDirectory() as folder:
        result = run(65 if args.quick else 195, args.variants, args.seeds[:1] if args.quick else args.seeds,
                     Path(folder))
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=2, default=str))
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
