"""Triage encoder vs its distilled student (row M8) on ~900 generated pre-consultation dialogues, CPU.

The dialogues come from lib/synth/dialogues.py (generator 2, Chinese and English, repeat visits) for
synthetic patients; what the patient says is the text (identifiers replaced by placeholders, as
de-identification would), the generator's department the label. Splits are the curate stage's
(lib/curate/datasets_text.split_texts: grouped by patient, stratified, near-duplicates together), the
tokenizer is trained without the validation and test persons as train/text_tokenizer does; the teacher
is the triage spec at demo size (lib/train/text/runs.text_training_config) and the student the
``triage`` block of lib/train/configs/compression.yaml, distilled by lib/train/text/distillation.distil_text
exactly as train/triage_model_distilled does.

    .venv/bin/python benchmarks/bench_triage_distillation.py           # writes benchmarks/results/triage_distillation.json
    .venv/bin/python benchmarks/bench_triage_distillation.py --quick   # ~300 dialogues, fewer calls, nothing written
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def _plans(count: int, offset: int) -> list[SimpleNamespace]:
    plans = []
    for i in range(offset, offset + count):
        person = SimpleNamespace(display_name=f"病人{i:04d}", name_en=f"Patient{i:04d}", phone=f"1390000{i:04d}")
        plans.append(SimpleNamespace(has_dialogue=True, diagnoses=[],
                                     registration=SimpleNamespace(mrn=f"MRN{i:05d}", person=person)))
    return plans


def dialogue_frame(plans_per_language: int, seed: int = 11) -> pd.DataFrame:
    """Labelled patient texts (text_id, patient_pseudonym, institution, language, label, near_duplicate_key, text)."""
    from medllm_pipelines.lib.curate.datasets_text import PATIENT_SPEAKER, text_near_duplicate_key
    from medllm_pipelines.lib.synth.determinism import stream
    from medllm_pipelines.lib.synth.dialogues import build_dialogues

    rows = []
    for number, language in enumerate(("zh", "en")):
        plans = _plans(plans_per_language, number * plans_per_language)
        people = {p.registration.mrn: p.registration.person for p in plans}
        output = build_dialogues(f"b{number}", language, plans, stream(seed, "bench-dialogues", language))
        for dialogue in output.dialogues:
            person = people[dialogue["patient_mrn"]]
            text = "\n".join(t["text"] for t in dialogue["turns"] if t["speaker"] == PATIENT_SPEAKER)
            for value, placeholder in ((person.display_name, "[PERSON]"), (person.name_en, "[PERSON]"),
                                       (person.phone, "[PHONE]")):
                text = text.replace(value, placeholder)
            rows.append({"text_id": dialogue["dialogue_id"], "patient_pseudonym": "ps-" + dialogue["patient_mrn"],
                         "institution": f"b{number}", "language": language, "label": dialogue["department"],
                         "near_duplicate_key": text_near_duplicate_key(text), "text": text})
    return pd.DataFrame(rows)


def run(plans_per_language: int, latency_calls: int, work: Path) -> dict:
    from medllm_pipelines.lib.curate.datasets_text import split_texts
    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.train.compression import load_compression_config
    from medllm_pipelines.lib.train.text.distillation import distil_text
    from medllm_pipelines.lib.train.text.runs import spec_classes, text_training_config
    from medllm_pipelines.lib.train.text.tokenizer import held_out_persons, train_tokenizer
    from medllm_pipelines.lib.train.text.training import train_text_classifier

    spec = load_spec("triage")
    texts = dialogue_frame(plans_per_language)
    splits = split_texts(texts, spec.split_config).splits
    frame = texts.merge(splits[["text_id", "split"]], on="text_id")
    tokenizer = train_tokenizer(frame.assign(source="dialogues"), excluded_persons=held_out_persons(splits)).tokenizer

    started = time.perf_counter()
    teacher = train_text_classifier(frame, tokenizer, spec_classes(spec), text_training_config(spec, "demo"),
                                    work / "teacher", spec_id=spec.id)
    teacher_seconds = time.perf_counter() - started
    config = dataclasses.replace(load_compression_config(spec.id), latency_calls=latency_calls)
    report = distil_text(teacher.model_dir, frame, tokenizer, config, work / "distilled")
    # the same student on the hard labels only (alpha 0): what the teacher's soft labels add
    hard_only = dataclasses.replace(config, distillation={**config.distillation, "alpha": 0.0})
    scratch = distil_text(teacher.model_dir, frame, tokenizer, hard_only, work / "hard_labels_only")
    return {
        "dialogues": len(frame), "rows_per_split": frame["split"].value_counts().to_dict(),
        "languages": frame["language"].value_counts().to_dict(), "vocab_size": tokenizer.get_vocab_size(),
        "teacher_train_seconds": round(teacher_seconds, 1), "teacher_epochs_run": teacher.epochs_run,
        "majority_class_test_accuracy": teacher.baseline_metrics["baseline_test_accuracy"],
        "teacher_network": {k: v for k, v in dataclasses.asdict(text_training_config(spec, "demo")).items()
                            if k in ("d_model", "n_heads", "n_layers", "dim_feedforward", "max_length")},
        "student_network": config.distillation["student"],
        "table": report.table(), "points_lost": report.drop_points, "within_tolerance": report.within_tolerance,
        "tolerance_points": report.tolerance_points, "gate_metrics": list(report.gate_metrics),
        "speedup_p50": report.speedup_p50, "size_ratio": round(report.teacher_bytes / report.student_bytes, 2),
        "per_language": {"teacher": report.teacher_metrics.subgroups, "student": report.student_metrics.subgroups},
        "student_best_epoch": report.best_epoch, "student_epochs_run": report.epochs_run,
        "student_train_seconds": round(report.train_seconds, 1),
        "student_hard_labels_only": {**scratch.student_metrics.overall, "best_epoch": scratch.best_epoch,
                                     "epochs_run": scratch.epochs_run},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~300 dialogues and 50 timed calls; nothing written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(65 if args.quick else 195, 50 if args.quick else 300, Path(folder))
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=2, default=str))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "triage_distillation.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
