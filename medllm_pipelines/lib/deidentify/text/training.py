"""Training the PHI tagger on the raw zone's own texts, scoring it held out and on text written by others.

Silver labels: each person's known identifiers projected into their own notes
and dialogues (``silver.project_person``). The split is by person (seeded), so
no held-out person's identifiers were seen in training. The tagger also learns
from generated sentences (``augment``), which lets a small or new delivery
train one without a held-out evaluation (said so in metadata, nothing fails).
The model is stored encrypted in the raw zone: it holds hashed character
features only, but its weights were fitted to identifiable text, and a
hashed-feature model can be probed with a candidate name (membership inference).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from medllm_pipelines.lib.deidentify.text.corpus import Identity, LinkedText
from medllm_pipelines.lib.deidentify.text.detector import Detector, build_detector
from medllm_pipelines.lib.deidentify.text.evaluate import evaluate_detector, split_by_person
from medllm_pipelines.lib.deidentify.text.silver import project_person
from medllm_pipelines.lib.deidentify.text.tagger import Tagger

TAGGER_SEED = 0
GENERATED_SENTENCES = 1500  # Faker-filled sentences from many templates + clinical negatives (augment)
TEST_FRACTION = 0.3
DETECT_BATCH = 64
PRESIDIO_RESEARCH_FILE = "presidio-research_synth_dataset_v2.json"
MODEL_FILE = "phi_tagger.npz"


class ObjectStore(Protocol):
    """What the tagger's storage needs of the raw zone (``lib.security.raw_zone.RawZone``)."""

    def put_object(self, sha256: str, content: bytes) -> Any: ...
    def get_object(self, sha256: str) -> bytes: ...
    def write_table(self, name: str, frame: pd.DataFrame) -> Any: ...
    def read_table(self, name: str) -> pd.DataFrame: ...


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class TaggerTraining:
    """A trained tagger, the detector built on it, and what the held-out split measured (None: not measured)."""

    tagger: Tagger
    detector: Detector
    texts_in: int
    train: list[LinkedText]
    test: list[LinkedText]
    generated: int
    report: dict[str, Any] | None
    training_s: float
    training_cpu_s: float
    seed: int = TAGGER_SEED
    test_fraction: float = TEST_FRACTION
    usable: int = 0
    conformance: dict[str, Any] = field(default_factory=dict)

    def _held_out(self) -> dict[str, Any]:
        per_type = {} if self.report is None else {
            label: {"gold": row["gold"], "predicted": row["predicted"], "precision": row["overlap"]["precision"],
                    "recall": row["overlap"]["recall"], "f1": row["overlap"]["f1"],
                    "exact_precision": row["exact"]["precision"], "exact_recall": row["exact"]["recall"],
                    "leaked_chars": row["leaked_chars"]}
            for label, row in self.report.items() if not label.startswith("_")
        }
        micro = (self.report["_micro"] if self.report is not None
                 else {"overlap": {"precision": None, "recall": None}, "leaked_chars": 0})
        return {
            "held_out_by_type": per_type,
            **{f"held_out_{metric}[{label}]": _number(row[metric])
               for label, row in per_type.items() if row["gold"] for metric in ("precision", "recall", "f1")},
            "held_out_micro_precision": _number(micro["overlap"]["precision"]),
            "held_out_micro_recall": _number(micro["overlap"]["recall"]),
            "held_out_leaked_chars": int(micro["leaked_chars"]),
            "held_out_measured": self.report is not None,
        }

    def as_metadata(self) -> dict[str, Any]:
        return {
            "texts_in": self.texts_in,
            "texts_unlinked_or_empty": self.texts_in - self.usable,
            "texts_train": len(self.train),
            "generated_sentences_train": self.generated,
            "texts_test": len(self.test),
            "persons_train": len({t.pseudonym for t in self.train}),
            "persons_test": len({t.pseudonym for t in self.test}),
            "test_texts_by_kind": {k: sum(t.kind == k for t in self.test) for k in ("note", "dialogue")},
            "split": f"by person, {int(self.test_fraction * 100)} % held out, seed {self.seed}",
            "silver_labels": "each person's raw-zone identifiers located in their own texts + note dates and signatures",
            **self._held_out(),
            **self.conformance,
            "matching": "overlap (a gold span found by a predicted span of its type); exact_* in held_out_by_type",
            "detector_version": self.detector.version,
            "tagger_digest": self.tagger.digest,
            "training_wall_s": round(self.training_s, 2),
            "training_cpu_s": round(self.training_cpu_s, 2),
            "training_positions": int(self.tagger.meta.get("training_positions", 0)),
            "epoch_losses": self.tagger.meta.get("epoch_losses", []),
        }


def train_phi_tagger(texts: list[LinkedText], identities: dict[str, Identity], *, seed: int = TAGGER_SEED,
                     test_fraction: float = TEST_FRACTION, generated: int = GENERATED_SENTENCES,
                     conformance_dir: Path | None = None) -> TaggerTraining:
    """Label ``texts`` with their persons' identifiers, split by person, train, evaluate held out.

    Too few linked texts for a split: every one trains, held-out figures are
    not measured. ``conformance_dir``: where text written by others is (scored when present).
    """
    from medllm_pipelines.lib.deidentify.text.augment import generated_sentences
    from medllm_pipelines.lib.deidentify.text.tagger import train_tagger

    usable = [t for t in texts if t.pseudonym in identities and t.text]
    for item in usable:
        item.spans = project_person(item.text, identities[str(item.pseudonym)], note_layout=item.kind == "note")
    train, test = split_by_person(usable, lambda t: t.pseudonym, test_fraction=test_fraction, seed=seed)
    if not train or not test:
        train, test = train + test, []
    started, cpu = time.perf_counter(), time.process_time()
    extra_texts, extra_gold = generated_sentences(generated, seed=seed)
    tagger = train_tagger([t.text for t in train] + extra_texts, [t.spans for t in train] + extra_gold,
                          seed=seed)
    training_s, training_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    detector = build_detector(tagger=tagger)
    report = evaluate_detector(detector, [t.text for t in test], [t.spans for t in test]) if test else None
    return TaggerTraining(tagger, detector, len(texts), train, test, len(extra_texts), report, training_s,
                          training_cpu_s, seed, test_fraction, len(usable),
                          conformance_metadata(detector, conformance_dir))


def conformance_metadata(detector: Detector, conformance_dir: Path | None) -> dict[str, Any]:
    """Per-type recall/precision/exact match and over-masking on text written by others, when present."""
    from medllm_pipelines.lib.deidentify.text.evaluate import load_presidio_research, over_masking, score_spans
    from medllm_pipelines.lib.deidentify.text.lexicon import name_lexicon

    path = conformance_dir / PRESIDIO_RESEARCH_FILE if conformance_dir is not None else None
    if path is None or not path.exists():
        return {"conformance_text": "not present (../shared/conformance/text)"}
    texts, gold, every_gold = load_presidio_research(path)
    predicted = []
    for begin in range(0, len(texts), DETECT_BATCH):
        predicted += detector.detect_many(texts[begin:begin + DETECT_BATCH])
    report = score_spans(predicted, gold)
    by_type = {label: {"gold": row["gold"], "predicted": row["predicted"], "recall": row["overlap"]["recall"],
                       "precision": row["overlap"]["precision"], "exact_recall": row["exact"]["recall"],
                       "exact_precision": row["exact"]["precision"]}
               for label, row in report.items() if not label.startswith("_") and row["gold"]}
    return {
        "conformance_text": f"{PRESIDIO_RESEARCH_FILE} ({len(texts)} English sentences, labels mapped to ours)",
        "conformance_by_type": by_type,
        **{f"conformance_recall[{label}]": _number(row["recall"]) for label, row in by_type.items()},
        "conformance_over_masking": _number(over_masking(texts, predicted, every_gold)["fraction"]),
        "name_lexicon": name_lexicon().source,
    }


def store_tagger(zone: ObjectStore, pointer_table: str, tagger: Tagger, *, seed: int, run_id: str) -> str:
    """Encrypt the model into the raw zone and point ``pointer_table`` at it; returns the model's SHA-256."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / MODEL_FILE
        model_sha256 = tagger.save(path)
        zone.put_object(model_sha256, path.read_bytes())
    zone.write_table(pointer_table, pd.DataFrame([{"object_sha256": model_sha256, "tagger_digest": tagger.digest,
                                                   "seed": seed, "dagster_run_id": run_id}]))
    return model_sha256


def load_tagger(zone: ObjectStore, pointer_table: str) -> Tagger:
    """The tagger ``pointer_table`` points at last (decrypted from the raw zone)."""
    pointer = zone.read_table(pointer_table).iloc[-1]
    data = zone.get_object(str(pointer["object_sha256"]))
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / MODEL_FILE
        path.write_bytes(data)
        return Tagger.load(path)
