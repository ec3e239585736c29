"""Free-text de-identification: the PHI tagger, de-identified notes and dialogues.

The tagger is trained on the raw zone's own texts, labelled by projecting
each patient's known identifiers into them (``lib.deidentify.text.silver``),
and evaluated on held-out persons. The model is kept in the encrypted raw
zone, not the artifact store: it holds no identifier string (hashed
character-window features and their weights), but its weights were fitted to
identifiable text, and a hashed-feature model can be probed with a candidate
name to tell whether that name was in training (membership inference).
"""


import tempfile
import time
from pathlib import Path

import orjson
import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import raw_table_name
from medllm_pipelines.defs.metadata import counts_by, run_id_of, versions_metadata
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.defs.deidentify.assets import (
    _person_lookups,
    _write_deidentified,
)
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

CONFORMANCE_TEXT = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "text"
PRESIDIO_RESEARCH_FILE = "presidio-research_synth_dataset_v2.json"
TAGGER_SEED = 0
GENERATED_SENTENCES = 1500  # Faker-filled sentences from many templates + clinical negatives (lib.deidentify.text.augment)
TEST_FRACTION = 0.3
DETECT_BATCH = 64
NOTE_COLUMNS = ["patient_key", "language", "text", "institution", "resource_key"]
DIALOGUE_COLUMNS = ["dialogue_id", "patient_mrn", "language", "turn_count", "turns_json", "institution"]


def _raw_partitions(zone, asset_key, columns: list[str]) -> pd.DataFrame:
    try:
        return zone.read_partitions(raw_table_name(asset_key))
    except FileNotFoundError:
        return pd.DataFrame(columns=columns)


def _persons(zone) -> tuple[dict, dict, pd.DataFrame, dict[str, dict[str, list[str]]]]:
    """Pseudonym lookups, the raw patients table (decrypted once per asset) and each person's identity."""
    by_key, by_mrn = _person_lookups(zone.read_table(raw_table_name(keys.PSEUDONYM_MAP)))
    patients = _raw_partitions(zone, keys.RAW_PATIENTS, ["institution", "resource_key", "mrn"])
    return by_key, by_mrn, patients, _identities_by_person(patients, by_key, by_mrn)


def _identities_by_person(patients: pd.DataFrame, by_key: dict, by_mrn: dict) -> dict[str, dict[str, list[str]]]:
    """Pseudonym -> the person's identity fields over all their raw patient records."""
    from medllm_pipelines.lib.deidentify.text.silver import merge_identities

    records: dict[str, list[dict]] = {}
    for row in patients.to_dict("records"):
        person = by_key.get((row.get("institution"), row.get("resource_key"))) or by_mrn.get(
            (row.get("institution"), row.get("mrn")))
        if person is not None:
            records.setdefault(person, []).append(row)
    return {person: merge_identities(rows) for person, rows in records.items()}


def _turns(turns_json: str | None) -> list[dict]:
    """A dialogue's turns; an unreadable dialogue has none."""
    try:
        turns = orjson.loads(turns_json or "[]")
    except orjson.JSONDecodeError:
        return []
    return [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []


def _turn_texts(turns_json: str | None) -> list[str]:
    return [str(t.get("text", "")) for t in _turns(turns_json)]


def _linked_texts(zone, by_key: dict, by_mrn: dict) -> list[dict]:
    """Every raw note and dialogue as {kind, pseudonym, language, text}, pseudonym None when unlinked."""
    out: list[dict] = []
    notes = _raw_partitions(zone, keys.RAW_NOTES, NOTE_COLUMNS)
    for row in notes[["institution", "patient_key", "language", "text"]].itertuples(index=False):
        out.append({"kind": "note", "pseudonym": by_key.get((row.institution, row.patient_key)),
                    "language": row.language, "text": row.text if isinstance(row.text, str) else ""})
    dialogues = _raw_partitions(zone, keys.RAW_DIALOGUES, DIALOGUE_COLUMNS)
    for row in dialogues[["institution", "patient_mrn", "language", "turns_json"]].itertuples(index=False):
        out.append({"kind": "dialogue", "pseudonym": by_mrn.get((row.institution, row.patient_mrn)),
                     "language": row.language, "text": "\n".join(_turn_texts(row.turns_json))})
    return out


def _round(value):
    return None if value is None else float(value)


@asset(
    key=keys.PHI_TAGGER,
    deps=[keys.RAW_NOTES, keys.RAW_DIALOGUES, keys.RAW_PATIENTS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "pytorch"},
    description=(
        "Character tagger for identifiers in free text, trained on 70 % of persons' notes and dialogues labelled by "
        "their own known identifiers, evaluated (patterns + tagger) on the other 30 %. Stored encrypted in the raw zone."
    ),
)
def phi_tagger(context: AssetExecutionContext, raw_zone: RawZoneResource) -> MaterializeResult:
    from medllm_pipelines.lib.deidentify.text import (
        build_detector,
        evaluate_detector,
        split_by_person,
        train_tagger,
    )
    from medllm_pipelines.lib.deidentify.text.silver import project_person

    zone = raw_zone.get()
    by_key, by_mrn, _, identities = _persons(zone)
    texts = _linked_texts(zone, by_key, by_mrn)
    usable = [t for t in texts if t["pseudonym"] in identities and t["text"]]
    for item in usable:
        item["spans"] = project_person(item["text"], identities[item["pseudonym"]], note_layout=item["kind"] == "note")
    train, test = split_by_person(usable, lambda t: t["pseudonym"], test_fraction=TEST_FRACTION, seed=TAGGER_SEED)
    if not train or not test:
        # a small or new delivery: the tagger still learns from the generated sentences; the held-out
        # figures are not measured (said so in metadata), and nothing fails
        context.log.warning(f"too few linked texts for a held-out evaluation ({len(train)} train, {len(test)} test): "
                            "the tagger is trained on them and on generated sentences; held-out figures not measured")
        train, test = train + test, []
    from medllm_pipelines.lib.deidentify.text.augment import generated_sentences

    started, cpu = time.perf_counter(), time.process_time()
    extra_texts, extra_gold = generated_sentences(GENERATED_SENTENCES, seed=TAGGER_SEED)
    tagger = train_tagger([t["text"] for t in train] + extra_texts, [t["spans"] for t in train] + extra_gold,
                          seed=TAGGER_SEED)
    training_s, training_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    detector = build_detector(tagger=tagger)
    report = evaluate_detector(detector, [t["text"] for t in test], [t["spans"] for t in test]) if test else None

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "phi_tagger.npz"
        model_sha256 = tagger.save(path)
        zone.put_object(model_sha256, path.read_bytes())
    pointer = pd.DataFrame([{"object_sha256": model_sha256, "tagger_digest": tagger.digest, "seed": TAGGER_SEED,
                             "dagster_run_id": run_id_of(context)}])
    zone.write_table(raw_table_name(keys.PHI_TAGGER), pointer)

    per_type = {} if report is None else {
        label: {"gold": row["gold"], "predicted": row["predicted"],
                "precision": row["overlap"]["precision"], "recall": row["overlap"]["recall"], "f1": row["overlap"]["f1"],
                "exact_precision": row["exact"]["precision"], "exact_recall": row["exact"]["recall"],
                "leaked_chars": row["leaked_chars"]}
        for label, row in report.items() if not label.startswith("_")
    }
    flat = {f"held_out_{metric}[{label}]": _round(row[metric])
            for label, row in per_type.items() if row["gold"] for metric in ("precision", "recall", "f1")}
    micro = report["_micro"] if report is not None else {"overlap": {"precision": None, "recall": None},
                                                            "leaked_chars": 0}
    others = _conformance_metadata(detector)
    return MaterializeResult(
        metadata={
            "texts_in": len(texts),
            "texts_unlinked_or_empty": len(texts) - len(usable),
            "texts_train": len(train),
            "generated_sentences_train": len(extra_texts),
            "texts_test": len(test),
            "persons_train": len({t["pseudonym"] for t in train}),
            "persons_test": len({t["pseudonym"] for t in test}),
            "test_texts_by_kind": MetadataValue.json(
                {k: sum(t["kind"] == k for t in test) for k in ("note", "dialogue")}),
            "split": f"by person, {int(TEST_FRACTION * 100)} % held out, seed {TAGGER_SEED}",
            "silver_labels": "each person's raw-zone identifiers located in their own texts + note dates and signatures",
            "held_out_by_type": MetadataValue.json(per_type),
            **flat,
            "held_out_micro_precision": _round(micro["overlap"]["precision"]),
            "held_out_micro_recall": _round(micro["overlap"]["recall"]),
            "held_out_leaked_chars": int(micro["leaked_chars"]),
            "held_out_measured": report is not None,
            **others,
            "matching": "overlap (a gold span found by a predicted span of its type); exact_* in held_out_by_type",
            "detector_version": MetadataValue.json(detector.version),
            "tagger_digest": tagger.digest,
            "model_sha256": model_sha256,
            "model_storage": "raw zone (envelope-encrypted object): weights fitted to identifiable text",
            "training_wall_s": round(training_s, 2),
            "training_cpu_s": round(training_cpu_s, 2),
            "training_positions": int(tagger.meta.get("training_positions", 0)),
            "epoch_losses": MetadataValue.json(tagger.meta.get("epoch_losses", [])),
            **versions_metadata(recognisers=detector.version["recognisers"]),
        }
    )


def _conformance_metadata(detector) -> dict:
    """Per-type recall/precision/exact match and over-masking on text written by others, when present."""
    from medllm_pipelines.lib.deidentify.text.evaluate import load_presidio_research, over_masking, score_spans
    from medllm_pipelines.lib.deidentify.text.lexicon import name_lexicon

    path = CONFORMANCE_TEXT / PRESIDIO_RESEARCH_FILE
    if not path.exists():
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
    masked = over_masking(texts, predicted, every_gold)
    return {
        "conformance_text": f"{PRESIDIO_RESEARCH_FILE} ({len(texts)} English sentences, labels mapped to ours)",
        "conformance_by_type": MetadataValue.json(by_type),
        **{f"conformance_recall[{label}]": _round(row["recall"]) for label, row in by_type.items()},
        "conformance_over_masking": _round(masked["fraction"]),
        "name_lexicon": name_lexicon().source,
    }


def load_phi_tagger(zone):
    """The tagger of the last ``phi_tagger`` materialisation (decrypted from the raw zone)."""
    from medllm_pipelines.lib.deidentify.text import Tagger

    pointer = zone.read_table(raw_table_name(keys.PHI_TAGGER)).iloc[-1]
    data = zone.get_object(str(pointer["object_sha256"]))
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "phi_tagger.npz"
        path.write_bytes(data)
        return Tagger.load(path)


def _load_detector(zone):
    from medllm_pipelines.lib.deidentify.text import build_detector

    return build_detector(tagger=load_phi_tagger(zone))


def _surrogates(patients: pd.DataFrame, vault: VaultResource, pseudonyms: list[str]):
    from medllm_pipelines.lib.deidentify.text.silver import patient_surrogates
    from medllm_pipelines.lib.security.leak_scan import identifier_needles

    forbidden = {value for values in identifier_needles(patients).values() for value in values}
    return patient_surrogates(pseudonyms, vault.hmac_many, forbidden=forbidden)


def _text_metadata(frame: pd.DataFrame, records_in: int, removed: dict[str, int], detector, surrogates: dict,
                   vault: VaultResource) -> dict:
    from medllm_pipelines.lib.deidentify.text import (
        ENTITY_TYPES,
        surrogate_vocabulary_version,
    )

    replaced = {label: int(frame[f"replaced_{label.lower()}"].sum()) if len(frame) else 0 for label in ENTITY_TYPES}
    return {
        "records_in": records_in,
        "records_out": len(frame),
        **{f"removed[{reason}]": count for reason, count in removed.items()},
        "reconciled": records_in == len(frame) + sum(removed.values()),
        "persons": int(frame["patient_pseudonym"].nunique()) if len(frame) else 0,
        "spans_replaced_by_type": MetadataValue.json(replaced),
        "texts_without_identifier_found": int((frame["spans_replaced"] == 0).sum()) if len(frame) else 0,
        "surrogates_redrawn_to_avoid_real_identifiers": sum(s.redrawn for s in surrogates.values()),
        "rows_by_institution": counts_by(frame, "institution"),
        "rows_by_language": counts_by(frame, "language"),
        "detector_version": MetadataValue.json(detector.version),
        "surrogate_key": f"{vault.transit_mount}/{vault.pseudonym_key_name} (per-patient subkey, HMAC-SHA-256)",
        "date_shift": "per patient, keyed, +-365 days (the DICOM offset)",
        **versions_metadata(recognisers=detector.version["recognisers"],
                            surrogate_vocabulary=surrogate_vocabulary_version()),
    }


def _counts_columns(spans_per_text: list) -> dict[str, list[int]]:
    from medllm_pipelines.lib.deidentify.text import ENTITY_TYPES
    from medllm_pipelines.lib.deidentify.text.silver import counts_by_label

    counts = [counts_by_label(spans, ENTITY_TYPES) for spans in spans_per_text]
    columns = {f"replaced_{label.lower()}": [c[label] for c in counts] for label in ENTITY_TYPES}
    columns["spans_replaced"] = [len(spans) for spans in spans_per_text]
    return columns


@asset(
    key=keys.DEID_NOTES,
    deps=[keys.PHI_TAGGER, keys.RAW_NOTES, keys.RAW_PATIENTS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
    description="Clinical notes with every detected identifier replaced by a consistent per-patient surrogate "
    "(dates shifted by the patient's offset), keyed by pseudonym.",
)
def deidentified_notes(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    from medllm_pipelines.lib.deidentify.text import replace_spans
    from medllm_pipelines.lib.deidentify.text.silver import known_identifiers
    from medllm_pipelines.lib.label.importers import keyed_ids

    zone = raw_zone.get()
    by_key, _, patients, identities = _persons(zone)
    notes = _raw_partitions(zone, keys.RAW_NOTES, NOTE_COLUMNS)
    person = [by_key.get((i, k)) for i, k in zip(notes["institution"], notes["patient_key"], strict=True)]
    notes = notes.assign(patient_pseudonym=person)
    has_text = notes["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))
    linked = notes["patient_pseudonym"].notna()
    removed = {"unlinked_person": int((~linked).sum()), "empty_text": int((linked & ~has_text).sum())}
    kept = notes[linked & has_text].reset_index(drop=True)
    detector = _load_detector(zone)
    surrogates = _surrogates(patients, vault, kept["patient_pseudonym"].tolist())
    texts = kept["text"].tolist()
    known = [known_identifiers(identities.get(p, {})) for p in kept["patient_pseudonym"]]
    spans_per_text: list = []
    for begin in range(0, len(texts), DETECT_BATCH):
        spans_per_text += detector.detect_many(texts[begin:begin + DETECT_BATCH], known=known[begin:begin + DETECT_BATCH])
    clean = [replace_spans(text, spans, surrogates[p])
             for text, spans, p in zip(texts, spans_per_text, kept["patient_pseudonym"], strict=True)]
    raw_ids = [f"note:{i}:{k}" for i, k in zip(kept["institution"], kept["resource_key"], strict=True)]
    frame = pd.DataFrame({
        "text_id": keyed_ids(raw_ids, vault.hmac_many, "n_"),
        "patient_pseudonym": kept["patient_pseudonym"].astype(str),
        "institution": kept["institution"].astype(str),
        "language": kept["language"].fillna("").astype(str),
        "text": clean,
        **_counts_columns(spans_per_text),
    })
    meta = _write_deidentified(warehouse, keys.DEID_NOTES, frame)
    return MaterializeResult(metadata={**meta, **_text_metadata(frame, len(notes), removed, detector, surrogates, vault)})


@asset(
    key=keys.DEID_DIALOGUES,
    deps=[keys.PHI_TAGGER, keys.RAW_DIALOGUES, keys.RAW_PATIENTS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
    description="Pre-consultation dialogues, every turn de-identified (detection over the whole dialogue), keyed by "
    "pseudonym; text_id equals the item_key of label/triage_annotations.",
)
def deidentified_dialogues(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    from medllm_pipelines.lib.deidentify.text.silver import (
        deidentify_turns,
        known_identifiers,
    )
    from medllm_pipelines.lib.label.importers import keyed_ids

    zone = raw_zone.get()
    _, by_mrn, patients, identities = _persons(zone)
    dialogues = _raw_partitions(zone, keys.RAW_DIALOGUES, DIALOGUE_COLUMNS)
    person = [by_mrn.get((i, m)) for i, m in zip(dialogues["institution"], dialogues["patient_mrn"], strict=True)]
    dialogues = dialogues.assign(patient_pseudonym=person)
    turns = dialogues["turns_json"].map(_turns)
    linked = dialogues["patient_pseudonym"].notna()
    has_turns = turns.map(bool)
    removed = {"unlinked_person": int((~linked).sum()), "no_readable_turns": int((linked & ~has_turns).sum())}
    keep = linked & has_turns
    kept, kept_turns = dialogues[keep].reset_index(drop=True), turns[keep].tolist()
    detector = _load_detector(zone)
    surrogates = _surrogates(patients, vault, kept["patient_pseudonym"].tolist())
    clean_turns, spans_per_text = [], []
    for dialogue, pseudonym in zip(kept_turns, kept["patient_pseudonym"], strict=True):
        texts, spans = deidentify_turns([str(t.get("text", "")) for t in dialogue], detector=detector,
                                        surrogate_for=surrogates[pseudonym],
                                        known=known_identifiers(identities.get(pseudonym, {})))
        clean_turns.append([{"speaker": str(t.get("speaker", "")), "text": x} for t, x in zip(dialogue, texts, strict=True)])
        spans_per_text.append(spans)
    raw_ids = [f"triage:{i}:{d}" for i, d in zip(kept["institution"], kept["dialogue_id"], strict=True)]
    frame = pd.DataFrame({
        "text_id": keyed_ids(raw_ids, vault.hmac_many, "i_"),
        "patient_pseudonym": kept["patient_pseudonym"].astype(str),
        "institution": kept["institution"].astype(str),
        "language": kept["language"].fillna("").astype(str),
        "turn_count": [len(t) for t in clean_turns],
        "text": ["\n".join(turn["text"] for turn in t) for t in clean_turns],
        "turns_json": [orjson.dumps(t).decode("utf-8") for t in clean_turns],
        **_counts_columns(spans_per_text),
    })
    meta = _write_deidentified(warehouse, keys.DEID_DIALOGUES, frame)
    return MaterializeResult(
        metadata={**meta, **_text_metadata(frame, len(dialogues), removed, detector, surrogates, vault)}
    )


ASSETS = [phi_tagger, deidentified_notes, deidentified_dialogues]
CHECKS = [identifier_leak_gate(k) for k in (keys.DEID_NOTES, keys.DEID_DIALOGUES)]
