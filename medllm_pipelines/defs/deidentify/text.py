"""Free-text de-identification: the PHI tagger, de-identified notes, dialogues and recorded consultations.

The tagger is trained on the raw zone's own texts, labelled by projecting
each patient's known identifiers into them, and evaluated on held-out persons
(``lib.deidentify.text.training``). The model is kept in the encrypted raw
zone, not the artifact store: it holds no identifier string (hashed
character-window features and their weights), but its weights were fitted to
identifiable text, and a hashed-feature model can be probed with a candidate
name to tell whether that name was in training (membership inference).
"""
# No `from __future__ import annotations` here: Dagster reads the asset functions' annotations.

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, asset

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.checks import identifier_leak_gate
from medllm_pipelines.defs.deidentify.storage import read_person_index, read_raw_partitions, write_deidentified
from medllm_pipelines.defs.keys import raw_table_name
from medllm_pipelines.defs.metadata import counts_by, run_id_of, versions_metadata
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource

if TYPE_CHECKING:  # the text library loads inside the assets (the tagger, patterns and lexicons are heavy)
    from medllm_pipelines.lib.deidentify.text import Detector, Tagger
    from medllm_pipelines.lib.deidentify.text.release import TextRelease

CONFORMANCE_TEXT = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "text"
# the raw partitions' columns when an institution delivered none of that feed
PATIENT_COLUMNS = ["institution", "resource_key", "mrn"]


def _raw_feed(zone: RawZone, feed: str) -> pd.DataFrame:
    """A raw text feed (notes, dialogues, consultations) or the raw patients, as delivered; an empty frame when
    none arrived."""
    from medllm_pipelines.lib.deidentify.text.corpus import DIALOGUE_COLUMNS, NOTE_COLUMNS
    from medllm_pipelines.lib.ingest.jsonl import COLUMNS
    from medllm_pipelines.lib.ingest.landing import CONSULTATIONS

    asset_key, columns = {"notes": (keys.RAW_NOTES, NOTE_COLUMNS), "dialogues": (keys.RAW_DIALOGUES, DIALOGUE_COLUMNS),
                          "consultations": (keys.RAW_CONSULTATIONS, COLUMNS[CONSULTATIONS]),
                          "patients": (keys.RAW_PATIENTS, PATIENT_COLUMNS)}[feed]
    return read_raw_partitions(zone, asset_key, columns)


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
    from medllm_pipelines.lib.deidentify.text.corpus import identities_by_person, linked_texts
    from medllm_pipelines.lib.deidentify.text.training import store_tagger, train_phi_tagger

    zone = raw_zone.get()
    persons = read_person_index(zone)
    texts = linked_texts(_raw_feed(zone, "notes"), _raw_feed(zone, "dialogues"), persons)
    trained = train_phi_tagger(texts, identities_by_person(_raw_feed(zone, "patients"), persons),
                               conformance_dir=CONFORMANCE_TEXT)
    if trained.report is None:  # a small or new delivery: trained on what there is and on generated sentences
        context.log.warning(f"too few linked texts for a held-out evaluation ({len(trained.train)} texts): the "
                            "tagger is trained on them and on generated sentences; held-out figures not measured")
    model_sha256 = store_tagger(zone, raw_table_name(keys.PHI_TAGGER), trained.tagger, seed=trained.seed,
                                run_id=run_id_of(context))
    return MaterializeResult(metadata={
        **trained.as_metadata(),
        "model_sha256": model_sha256,
        "model_storage": "raw zone (envelope-encrypted object): weights fitted to identifiable text",
        **versions_metadata(recognisers=trained.detector.version["recognisers"]),
    })


def load_phi_tagger(zone: RawZone) -> "Tagger":
    """The tagger of the last ``phi_tagger`` materialisation (decrypted from the raw zone)."""
    from medllm_pipelines.lib.deidentify.text.training import load_tagger

    return load_tagger(zone, raw_table_name(keys.PHI_TAGGER))


def _text_metadata(released: "TextRelease", detector: "Detector", vault: VaultResource) -> dict[str, Any]:
    """What both text assets report beside the release's own figures: breakdowns, detector, keys, versions."""
    from medllm_pipelines.lib.deidentify.text import surrogate_vocabulary_version

    return {
        **released.as_metadata(),
        "rows_by_institution": counts_by(released.frame, "institution"),
        "rows_by_language": counts_by(released.frame, "language"),
        "detector_version": detector.version,
        "surrogate_key": f"{vault.transit_mount}/{vault.pseudonym_key_name} (per-patient subkey, HMAC-SHA-256)",
        **versions_metadata(recognisers=detector.version["recognisers"],
                            surrogate_vocabulary=surrogate_vocabulary_version()),
    }


def _release_texts(kind: str, raw_zone: RawZoneResource, vault: VaultResource,
                   warehouse: WarehouseResource) -> MaterializeResult:
    """Detect and replace identifiers in every note, dialogue or consultation with the last trained tagger; write;
    report."""
    from medllm_pipelines.lib.deidentify.text import build_detector
    from medllm_pipelines.lib.deidentify.text.corpus import identities_by_person
    from medllm_pipelines.lib.deidentify.text.release import (
        deidentify_consultations,
        deidentify_dialogues,
        deidentify_notes,
    )

    zone = raw_zone.get()
    persons = read_person_index(zone)
    patients = _raw_feed(zone, "patients")
    texts = _raw_feed(zone, kind)
    detector = build_detector(tagger=load_phi_tagger(zone))
    release, target = {"notes": (deidentify_notes, keys.DEID_NOTES),
                       "dialogues": (deidentify_dialogues, keys.DEID_DIALOGUES),
                       "consultations": (deidentify_consultations, keys.DEID_CONSULTATIONS)}[kind]
    released = release(texts, patients, persons, identities_by_person(patients, persons), detector, vault.hmac_many)
    return MaterializeResult(metadata={**write_deidentified(warehouse, target, released.frame),
                                       **_text_metadata(released, detector, vault)})


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
    return _release_texts("notes", raw_zone, vault, warehouse)


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
    return _release_texts("dialogues", raw_zone, vault, warehouse)


@asset(
    key=keys.DEID_CONSULTATIONS,
    deps=[keys.PHI_TAGGER, keys.RAW_CONSULTATIONS, keys.RAW_PATIENTS, keys.PSEUDONYM_MAP],
    group_name=keys.DEIDENTIFY,
    kinds={"python", "duckdb"},
    description="Recorded consultations and ward rounds: the transcript turn by turn and the doctor's signed record "
    "de-identified together (detection over the whole visit, one surrogate per patient), keyed by pseudonym.",
)
def deidentified_consultations(
    context: AssetExecutionContext, raw_zone: RawZoneResource, vault: VaultResource, warehouse: WarehouseResource
) -> MaterializeResult:
    return _release_texts("consultations", raw_zone, vault, warehouse)


ASSETS: list[AssetsDefinition] = [phi_tagger, deidentified_notes, deidentified_dialogues, deidentified_consultations]
CHECKS = [identifier_leak_gate(k) for k in (keys.DEID_NOTES, keys.DEID_DIALOGUES, keys.DEID_CONSULTATIONS)]
