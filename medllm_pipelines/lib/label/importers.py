"""Annotation import: raw (identifiable) annotation records -> pseudonymised label tables.

These functions run inside the label stage's import assets, which read the
encrypted raw zone the way the de-identification stage does; what they return
holds no direct identifier:

- items are keyed by keyed HMACs (Vault transit) of the institution's item
  ids, images by the same keyed hash of the SOPInstanceUID that
  ``deidentify/images`` uses as ``image_id``, persons by their pseudonym;
- brat spans keep offsets and entity type always, and their surface text only
  for entity types the guideline declares non-identifying (SYMPTOM, DISEASE,
  DRUG) and only when no annotator marked an identifier over the same
  characters; names and phone numbers (PERSON, PHONE) never leave the raw zone;
- file paths (which can name a patient) are used in memory to pair brat
  ``.ann`` with ``.txt`` by file stem and are never returned.

Only persons with a granted research consent enter a labelled set; other
items are removed and counted by reason. Every rejected record becomes a
quarantine row with a reason code and no value.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import QuarantineRecord
from medllm_pipelines.lib.label import brat as brat_module
from medllm_pipelines.lib.label import images as image_module
from medllm_pipelines.lib.label.audit import in_audit_sample
from medllm_pipelines.lib.label.consensus import parse_decision
from medllm_pipelines.lib.label.registry import (
    ADJUDICATOR,
    ANNOTATOR,
    AUDITOR,
    UNKNOWN_LABEL,
    Guideline,
    Registry,
    check_provenance,
)

STAGE = "label"
GRANTED = "granted"
HmacMany = Callable[[Sequence[str]], Sequence[str]]
ReadObject = Callable[[str], bytes]

TRIAGE_SET = "triage_labels"
ENTITY_SET = "clinical_entities"
MASK_SET = "lesion_masks"
BOX_SET = "lesion_boxes"
DOCUMENT = "document"  # entity table row kind: the annotator annotated this document (not an annotation record)
SET_OF_TASK = {"classification": TRIAGE_SET, "entities": ENTITY_SET, "segmentation": MASK_SET}

TRIAGE_COLUMNS = ["item_key", "patient_pseudonym", "institution", "annotator_id", "label", "annotated_at", "tool",
                  "guideline_version", "audit_sample"]
ENTITY_COLUMNS = [
    "item_key", "patient_pseudonym", "institution", "text_length", "annotator_id", "kind", "annotation_id", "type",
    "start", "end", "fragments", "identifier", "text", "arg1", "arg2", "annotated_at", "tool", "guideline_version",
]
IMAGE_COLUMNS = [
    "image_id", "study_key", "patient_pseudonym", "institution", "annotator_id", "shape_kind", "source_format",
    "rows", "columns", "mask_rle", "boxes", "pixels", "annotated_at", "tool", "guideline_version",
]
DECISION_COLUMNS = ["labelled_set", "item_key", "patient_pseudonym", "institution", "role", "action", "value",
                    "decided_by", "decided_at", "guideline_version"]


@dataclass
class ImportResult:
    frame: pd.DataFrame
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    records_in: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    guideline_versions: set[str] = field(default_factory=set)

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(q.reason_code for q in self.quarantine).items()))


def keyed_ids(values: Sequence[str], hmac_many: HmacMany, prefix: str, hex_chars: int = 24) -> list[str]:
    """Keyed HMAC-SHA-256 (key in Vault) of each value, as ``<prefix><hex>``."""
    from medllm_pipelines.lib.deidentify.policy import digest_to_hex

    if not values:
        return []
    unique = sorted(set(values))
    digests = hmac_many(unique)
    mapping = {v: prefix + digest_to_hex(d)[:hex_chars] for v, d in zip(unique, digests, strict=True)}
    return [mapping[v] for v in values]


def image_ids(sop_instance_uids: Sequence[str], hmac_many: HmacMany) -> list[str]:
    """The ``image_id`` deidentify/images gives the same SOPInstanceUID (policy's keyed hash)."""
    from medllm_pipelines.lib.deidentify.policy import keyed_pseudonyms, load_policy

    return keyed_pseudonyms(list(sop_instance_uids), hmac_many, load_policy())


@dataclass
class PersonLink:
    """(institution, MRN) -> pseudonym, and each pseudonym's consent status (in memory only)."""

    by_mrn: dict[tuple[str, str], str]
    consent: dict[str, str]

    @classmethod
    def build(cls, pseudonym_map: pd.DataFrame, consent_registry: pd.DataFrame) -> PersonLink:
        by_mrn = {
            (str(i), str(m)): str(p)
            for i, m, p in pseudonym_map[["institution", "mrn", "patient_pseudonym"]].itertuples(index=False)
            if isinstance(m, str)
        }
        consent = dict(zip(consent_registry["patient_pseudonym"], consent_registry["consent_status"], strict=True))
        return cls(by_mrn, consent)

    def person(self, institution: str | None, mrn: Any) -> str | None:
        return self.by_mrn.get((str(institution), str(mrn))) if isinstance(mrn, str) else None

    def exclusion(self, pseudonym: str | None) -> str | None:
        """Why a person's annotations stay out of the labelled set, or None."""
        if pseudonym is None:
            return "unlinked_item"
        status = self.consent.get(pseudonym, "unknown")
        return None if status == GRANTED else f"no_granted_consent:{status}"


def _quarantine(asset: str, institution: str | None, source: str | None, position: int | None, kind: str,
                code: str, reason: str) -> QuarantineRecord:
    return QuarantineRecord(STAGE, asset, institution, source, position, kind, code, reason)


def _position(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


# --- triage (label JSONL) -----------------------------------------------------------------
def import_triage_annotations(
    raw: pd.DataFrame,
    dialogues: pd.DataFrame,
    link: PersonLink,
    registry: Registry,
    guidelines: dict[str, Guideline],
    hmac_many: HmacMany,
    asset: str,
) -> ImportResult:
    """Classification labels of registered annotators; adjudicator/auditor rows are left to the decisions import."""
    result = ImportResult(pd.DataFrame(columns=TRIAGE_COLUMNS), records_in=len(raw))
    removed: Counter[str] = Counter()
    patient_of = {(str(i), str(d)): link.person(i, m) for d, m, i in dialogues[["dialogue_id", "patient_mrn", "institution"]].itertuples(index=False)} if len(dialogues) else {}
    rows = []
    for record in raw.itertuples(index=False):
        role = registry.role_of(record.annotator_id)
        if role in (ADJUDICATOR, AUDITOR):
            removed["expert_or_audit_row"] += 1
            continue
        position, source = _position(record.source_position), record.source_object
        problem = check_provenance(record.annotator_id, record.guideline_version, "classification", registry, guidelines)
        if problem is not None:
            result.quarantine.append(_quarantine(asset, record.institution, source, position, "annotations", problem.reason_code, problem.reason))
            continue
        guideline = guidelines[record.guideline_version]
        if record.label not in guideline.labels:
            result.quarantine.append(_quarantine(asset, record.institution, source, position, "annotations", UNKNOWN_LABEL,
                                                 f"label not declared in guideline {guideline.version_id}"))
            continue
        person = patient_of.get((str(record.institution), str(record.item_id)))
        exclusion = link.exclusion(person)
        if exclusion:
            removed[exclusion] += 1
            continue
        audit = guideline.audit
        sampled = bool(audit) and in_audit_sample(str(audit["seed"]), TRIAGE_SET, record.institution, str(record.item_id),
                                                  float(audit["sample_rate"]))
        rows.append({"raw_item": f"triage:{record.institution}:{record.item_id}", "audit_sample": sampled, "patient_pseudonym": person,
                     "institution": record.institution, "annotator_id": record.annotator_id, "label": record.label,
                     "annotated_at": record.annotated_at, "tool": record.tool, "guideline_version": record.guideline_version})
        result.guideline_versions.add(record.guideline_version)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["raw_item", "annotator_id", "annotated_at"])
        before = len(frame)
        frame = frame.drop_duplicates(["raw_item", "annotator_id"], keep="last")
        if before > len(frame):
            removed["superseded_by_later_annotation"] += before - len(frame)
        frame["item_key"] = keyed_ids(frame["raw_item"].tolist(), hmac_many, "i_")
        result.frame = frame[TRIAGE_COLUMNS].sort_values(["item_key", "annotator_id"]).reset_index(drop=True)
    result.removed = dict(sorted(removed.items()))
    return result


# --- brat -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawObject:
    """A stored raw-zone object; ``relpath`` is the decrypted landing path, kept in memory only."""

    sha256: str
    institution: str | None
    kind: str
    relpath: str


def _stem(relpath: str) -> str:
    name = posixpath.basename(relpath)
    for suffix in (".nii.gz", ".ann", ".txt", ".nii", ".json", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def import_brat(
    objects: Sequence[RawObject],
    read: ReadObject,
    dialogues: pd.DataFrame,
    link: PersonLink,
    registry: Registry,
    guidelines: dict[str, Guideline],
    hmac_many: HmacMany,
    asset: str,
) -> ImportResult:
    """Entities and relations of every .ann, paired with its .txt by (institution, file stem)."""
    texts: dict[tuple[str | None, str], str | None] = {}
    for obj in objects:
        if obj.kind == "brat_text":
            texts[(obj.institution, _stem(obj.relpath))] = brat_module.decode(read(obj.sha256))
    patient_of = {(str(i), str(d)): link.person(i, m) for d, m, i in dialogues[["dialogue_id", "patient_mrn", "institution"]].itertuples(index=False)} if len(dialogues) else {}
    result = ImportResult(pd.DataFrame(columns=ENTITY_COLUMNS))
    removed: Counter[str] = Counter()
    staged: list[dict[str, Any]] = []
    identifier_chars: dict[str, set[int]] = {}
    for obj in sorted((o for o in objects if o.kind == "brat_ann"), key=lambda o: o.sha256):
        ann_text = brat_module.decode(read(obj.sha256))
        if ann_text is None:
            result.records_in += 1
            result.quarantine.append(_quarantine(asset, obj.institution, obj.sha256, None, "brat_ann", brat_module.ENCODING_ERROR, "file is not valid UTF-8"))
            continue
        positions = brat_module.annotation_positions(ann_text)
        result.records_in += len(positions)

        def reject_all(code: str, reason: str, positions: list[int] = positions, obj: RawObject = obj) -> None:
            for position in positions:
                result.quarantine.append(_quarantine(asset, obj.institution, obj.sha256, position, "brat_ann", code, reason))

        stem = _stem(obj.relpath)
        doc_text = texts.get((obj.institution, stem))
        if doc_text is None:
            reject_all(brat_module.TEXT_NOT_FOUND, "no readable .txt with the same file stem from this institution")
            continue
        provenance = brat_module.read_provenance(ann_text)
        if not provenance.get("annotator_id") or not provenance.get("guideline_version"):
            reject_all(brat_module.MISSING_PROVENANCE, "no '#0 Provenance' note with annotator_id and guideline_version")
            continue
        problem = check_provenance(provenance["annotator_id"], provenance["guideline_version"], "entities", registry, guidelines)
        if problem is None and registry.role_of(provenance["annotator_id"]) != ANNOTATOR:
            problem = brat_module.Rejection(None, "not_an_annotator", "only registered annotators' brat files form the labelled set")  # type: ignore[assignment]
        if problem is not None:
            reject_all(problem.reason_code, problem.reason)
            continue
        guideline = guidelines[provenance["guideline_version"]]
        parsed = brat_module.parse_ann(ann_text, doc_text, guideline)
        for rejection in parsed.rejections:
            result.quarantine.append(_quarantine(asset, obj.institution, obj.sha256, rejection.position, "brat_ann",
                                                 rejection.reason_code, rejection.reason))
        person = patient_of.get((str(obj.institution), stem))
        exclusion = link.exclusion(person)
        accepted = len(parsed.entities) + len(parsed.relations)
        if exclusion:
            removed[exclusion] += accepted
            continue
        raw_item = f"text:{obj.institution}:{stem}"
        base = {"raw_item": raw_item, "patient_pseudonym": person, "institution": obj.institution, "text_length": len(doc_text),
                "annotator_id": provenance["annotator_id"], "annotated_at": provenance.get("annotated_at"),
                "tool": provenance.get("tool"), "guideline_version": guideline.version_id}
        result.guideline_versions.add(guideline.version_id)
        # One "document" row per (document, annotator): an annotator who marked nothing still took part.
        staged.append({**base, "kind": DOCUMENT, "annotation_id": "#0", "type": None, "start": None, "end": None,
                       "fragments": None, "identifier": False, "arg1": None, "arg2": None, "_text": None, "_fragments": ()})
        for entity in parsed.entities:
            identifier = guideline.is_identifier_type(entity.type)
            if identifier:
                chars = identifier_chars.setdefault(raw_item, set())
                for s, e in entity.fragments:
                    chars.update(range(s, e))
            staged.append({**base, "kind": "entity", "annotation_id": entity.id, "type": entity.type, "start": entity.start,
                           "end": entity.end, "fragments": ";".join(f"{s}-{e}" for s, e in entity.fragments),
                           "identifier": identifier, "arg1": None, "arg2": None,
                           "_text": " ".join(doc_text[s:e] for s, e in entity.fragments), "_fragments": entity.fragments})
        for relation in parsed.relations:
            staged.append({**base, "kind": "relation", "annotation_id": relation.id, "type": relation.type, "start": None,
                           "end": None, "fragments": None, "identifier": False, "arg1": relation.arg1, "arg2": relation.arg2,
                           "_text": None, "_fragments": ()})
    # Text is kept only for non-identifier types, and never over characters any annotator marked as an identifier.
    for row in staged:
        marked = identifier_chars.get(row["raw_item"], set())
        safe = row["kind"] == "entity" and not row["identifier"] and not any(
            marked.intersection(range(s, e)) for s, e in row["_fragments"])
        row["text"] = row["_text"] if safe else None
    if staged:
        frame = pd.DataFrame(staged).drop(columns=["_text", "_fragments"])
        frame["item_key"] = keyed_ids(frame["raw_item"].tolist(), hmac_many, "d_")
        frame["start"] = frame["start"].astype("Int64")
        frame["end"] = frame["end"].astype("Int64")
        result.frame = frame[ENTITY_COLUMNS].sort_values(["item_key", "annotator_id", "kind", "annotation_id"]).reset_index(drop=True)
    result.removed = dict(sorted(removed.items()))
    return result


# --- images -----------------------------------------------------------------------------------
READERS = {"nifti_mask": image_module.read_nifti_mask, "dicom_seg": image_module.read_dicom_seg, "coco": image_module.read_coco}


def import_images(
    objects: Sequence[RawObject],
    read: ReadObject,
    dicom_index: pd.DataFrame,
    link: PersonLink,
    registry: Registry,
    guidelines: dict[str, Guideline],
    hmac_many: HmacMany,
    asset: str,
) -> ImportResult:
    """Masks (NIfTI, DICOM SEG) and boxes (COCO), one row per (image, annotator, shape kind)."""
    index = dicom_index.drop_duplicates("sop_instance_uid", keep="first") if len(dicom_index) else dicom_index
    shapes = {str(u): (int(r), int(c)) for u, r, c in index[["sop_instance_uid", "rows", "columns"]].itertuples(index=False)} if len(index) else {}
    where = {str(u): (str(i), str(s), link.person(i, p)) for u, i, s, p in
             index[["sop_instance_uid", "institution", "study_uid", "patient_id"]].itertuples(index=False)} if len(index) else {}
    result = ImportResult(pd.DataFrame(columns=IMAGE_COLUMNS))
    removed: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    labels = tuple(sorted({label for g in guidelines.values() if g.task == "segmentation" for label in g.labels})) or ("LESION",)
    for obj in sorted(objects, key=lambda o: o.sha256):
        reader = READERS.get(obj.kind)
        if reader is None:
            continue
        parsed = reader(read(obj.sha256), shapes, labels)
        result.records_in += parsed.records_in
        for rejection in parsed.rejections:
            result.quarantine.append(_quarantine(asset, obj.institution, obj.sha256, rejection.position, obj.kind,
                                                 rejection.reason_code, rejection.reason))
        if not parsed.annotations:
            continue
        problem = check_provenance(parsed.provenance.get("annotator_id"), parsed.provenance.get("guideline_version"),
                                   "segmentation", registry, guidelines)
        if problem is None and registry.role_of(parsed.provenance["annotator_id"]) != ANNOTATOR:
            problem = brat_module.Rejection(None, "not_an_annotator", "only registered annotators' files form the labelled set")  # type: ignore[assignment]
        if problem is not None:
            for annotation in parsed.annotations:
                result.quarantine.append(_quarantine(asset, obj.institution, obj.sha256, annotation.position, obj.kind,
                                                     problem.reason_code, problem.reason))
            continue
        guideline = guidelines[parsed.provenance["guideline_version"]]
        for annotation in parsed.annotations:
            institution, study_uid, person = where[annotation.sop_instance_uid]
            exclusion = link.exclusion(person)
            if exclusion:
                removed[exclusion] += 1
                continue
            rows_, columns_ = shapes[annotation.sop_instance_uid]
            mask = annotation.as_mask((rows_, columns_))
            rows.append({
                "sop": annotation.sop_instance_uid, "study": f"study:{study_uid}", "patient_pseudonym": person,
                "institution": institution, "annotator_id": annotation.annotator_id, "shape_kind": annotation.shape_kind,
                "source_format": annotation.source_format, "rows": rows_, "columns": columns_,
                "mask_rle": image_module.mask_to_rle(mask),
                "boxes": json.dumps([list(b) for b in annotation.boxes]) if annotation.shape_kind == image_module.BOX else None,
                "pixels": int(mask.sum()), "annotated_at": annotation.annotated_at, "tool": annotation.tool,
                "guideline_version": guideline.version_id,
            })
            result.guideline_versions.add(guideline.version_id)
    if rows:
        frame = pd.DataFrame(rows).sort_values(["sop", "annotator_id", "shape_kind", "annotated_at"])
        before = len(frame)
        frame = frame.drop_duplicates(["sop", "annotator_id", "shape_kind"], keep="last")
        if before > len(frame):
            removed["superseded_by_later_annotation"] += before - len(frame)
        frame["image_id"] = image_ids(frame["sop"].tolist(), hmac_many)
        frame["study_key"] = keyed_ids(frame["study"].tolist(), hmac_many, "s_")
        result.frame = frame[IMAGE_COLUMNS].sort_values(["image_id", "shape_kind", "annotator_id"]).reset_index(drop=True)
    result.removed = dict(sorted(removed.items()))
    return result


# --- expert decisions and audit verdicts ------------------------------------------------------------
def import_expert_decisions(
    raw: pd.DataFrame,
    dialogues: pd.DataFrame,
    dicom_index: pd.DataFrame,
    link: PersonLink,
    registry: Registry,
    guidelines: dict[str, Guideline],
    hmac_many: HmacMany,
    asset: str,
) -> ImportResult:
    """Adjudicators' decisions and auditors' verdicts (label JSONL lines), keyed like the items they decide."""
    experts = raw[raw["annotator_id"].map(registry.role_of).isin([ADJUDICATOR, AUDITOR])] if len(raw) else raw
    result = ImportResult(pd.DataFrame(columns=DECISION_COLUMNS), records_in=len(experts))
    removed: Counter[str] = Counter()
    patient_of = {(str(i), str(d)): link.person(i, m) for d, m, i in dialogues[["dialogue_id", "patient_mrn", "institution"]].itertuples(index=False)} if len(dialogues) else {}
    image_person = {str(u): link.person(i, p) for u, i, p in dicom_index[["sop_instance_uid", "institution", "patient_id"]].itertuples(index=False)} if len(dicom_index) else {}
    rows = []
    for record in experts.itertuples(index=False):
        position, source = _position(record.source_position), record.source_object
        guideline = guidelines.get(record.guideline_version)
        if guideline is None:
            result.quarantine.append(_quarantine(asset, record.institution, source, position, "annotations",
                                                 "unknown_guideline_version", "guideline version has no file in lib/label/guidelines/"))
            continue
        role = registry.role_of(record.annotator_id)
        parsed = parse_decision(str(record.label), guideline.task, guideline.labels)
        if parsed is None or (role == AUDITOR and parsed[0] != "label" and guideline.task == "classification"):
            result.quarantine.append(_quarantine(asset, record.institution, source, position, "annotations", "invalid_decision",
                                                 "decision is neither a guideline label, 'accept:<annotator>' nor 'reject'"))
            continue
        if parsed[0] == "accept" and registry.role_of(str(parsed[1])) != ANNOTATOR:
            result.quarantine.append(_quarantine(asset, record.institution, source, position, "annotations", "invalid_decision",
                                                 "accepted annotator is not a registered annotator"))
            continue
        if guideline.task == "segmentation":
            raw_item, person = str(record.item_id), image_person.get(str(record.item_id))
            if str(record.item_id) not in image_person:
                result.quarantine.append(_quarantine(asset, record.institution, source, position, "annotations", "unknown_image",
                                                     "decision refers to a SOPInstanceUID the DICOM index does not know"))
                continue
        else:
            prefix = "triage" if guideline.task == "classification" else "text"
            raw_item, person = f"{prefix}:{record.institution}:{record.item_id}", patient_of.get((str(record.institution), str(record.item_id)))
        exclusion = link.exclusion(person)
        if exclusion:
            removed[exclusion] += 1
            continue
        rows.append({"raw_item": raw_item, "task": guideline.task, "labelled_set": SET_OF_TASK[guideline.task],
                     "patient_pseudonym": person, "institution": record.institution, "role": role, "action": parsed[0],
                     "value": parsed[1], "decided_by": record.annotator_id, "decided_at": record.annotated_at,
                     "guideline_version": guideline.version_id})
        result.guideline_versions.add(guideline.version_id)
    if rows:
        frame = pd.DataFrame(rows)
        keys = pd.Series(index=frame.index, dtype=object)
        images = frame["task"] == "segmentation"
        if images.any():
            keys[images] = image_ids(frame.loc[images, "raw_item"].tolist(), hmac_many)
        for task, prefix in (("classification", "i_"), ("entities", "d_")):
            chosen = frame["task"] == task
            if chosen.any():
                keys[chosen] = keyed_ids(frame.loc[chosen, "raw_item"].tolist(), hmac_many, prefix)
        frame["item_key"] = keys
        result.frame = frame[DECISION_COLUMNS].sort_values(["labelled_set", "item_key", "decided_at"]).reset_index(drop=True)
    result.removed = dict(sorted(removed.items()))
    return result
