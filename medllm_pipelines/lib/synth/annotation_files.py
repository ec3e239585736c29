"""Annotation files an institution's labelling office delivers, with controlled disagreement.

Per institution, under ``<inst>/annotations/``:

- ``brat/<dialogue id>.txt`` and ``brat/<annotator>/<dialogue id>.ann``: brat
  standoff entities (SYMPTOM, DISEASE, DRUG and the identifier types PERSON,
  PHONE) and TREATS relations over about half of the triage dialogues, by
  three annotators. Each ``.ann`` starts with a provenance note
  ``#0<TAB>Provenance<TAB>annotator_id=...;annotated_at=...;tool=...;guideline_version=...``.
- ``masks/<annotator>/study-NNNNN.nii.gz``: per-annotator lesion masks of every
  non-defective study with a lesion, one NIfTI volume per study (axes column,
  row, instance), perturbed from the ground-truth masks so that Dice varies.
  A JSON header extension (NIfTI comment, ecode 6) names the SOPInstanceUID of
  every slice and carries annotator id, time, tool and guideline version.
- ``seg/ann-01/study-NNNNN.dcm``: for the first few such studies of each
  institution, ann-01 works in 3D Slicer and delivers a DICOM Segmentation
  (highdicom) referencing the source images, instead of a NIfTI file.
- ``coco/boxes-<annotator>.json``: COCO boxes derived from each annotator's
  masks; ``images[].sop_instance_uid`` names the image.
- ``adjudication.jsonl`` (exp-01) and ``audit.jsonl`` (aud-01): label JSONL
  lines like ``annotations.jsonl``: the expert's decisions on some of the
  items the annotators disagree on (a label, or ``accept:<annotator>``), and
  the auditor's labels for the hash-sampled audit items.

Ground truth (gold entities, intended error rates, planted defects) goes to
``_truth/annotations/<inst>.json``. Unless the hospital is generated clean,
one institution also receives planted bad annotations (out-of-bounds and
overlapping spans, an unknown label, an unregistered annotator, a guideline
version that does not exist, a mask of the wrong shape, a box outside its
image), each listed with the reason the importer must give.

This module is the labelling office (who annotates what, when, with which tool
and guideline; what the expert and the auditor decide); the entity annotations
are made in :mod:`annotation_text`, the masks, SEG objects and boxes in
:mod:`annotation_images`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from medllm_pipelines.lib.synth.annotation_images import (
    LESION_LABEL,
    MASK_ERRORS,
    add_coco_entry,
    mask_dice,
    nifti_mask_bytes,
    perturb_mask,
    seg_bytes,
)
from medllm_pipelines.lib.synth.annotation_text import (
    ENTITY_ERRORS,
    IDENTIFIER_TYPES,
    annotate_entities,
    brat_ann,
    dialogue_text,
    gold_entities,
    gold_relations,
    span_f1,
)
from medllm_pipelines.lib.synth.defects import DefectRates
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.synth.dialogues import ANNOTATION_TOOL as TRIAGE_TOOL
from medllm_pipelines.lib.synth.dialogues import GUIDELINE_VERSION as TRIAGE_GUIDELINE
from medllm_pipelines.lib.synth.dialogues import DialogueOutput
from medllm_pipelines.lib.synth.dicom import ImageTruth, ImagingOutput
from medllm_pipelines.lib.synth.files import OutputTree, json_bytes, jsonl_bytes
from medllm_pipelines.lib.synth.institutions import Institution
from medllm_pipelines.lib.synth.plans import PatientPlan

ANNOTATORS = ("ann-01", "ann-02", "ann-03")
EXPERT = "exp-01"
AUDITOR = "aud-01"
TEXT_GUIDELINE = "clinical-entities-v1.0"
IMAGE_GUIDELINE = "lesion-annotation-v1.0"
TEXT_TOOL = "brat v1.3"
MASK_TOOL = "ITK-SNAP 4.2"
SEG_TOOL = "3D Slicer 5.6 (highdicom)"
BOX_TOOL = "CVAT 2.11"
ADJUDICATION_TOOL = "adjudication console 1.0"
AUDIT_TOOL = "audit console 1.0"

BRAT_DIALOGUE_RATE = 0.5
SEG_STUDIES_PER_INSTITUTION = 2
SEG_ANNOTATOR = "ann-01"
ADJUDICATION_RATE = 0.7  # share of disagreements the expert has decided so far
TRUTH_DIR = "_truth/annotations"


@dataclass
class AnnotationTruth:
    """What was written for one institution (for the manifest side file and tests)."""

    documents: int = 0
    annotated_studies: int = 0
    seg_objects: int = 0
    mask_files: int = 0
    coco_files: int = 0
    adjudications: int = 0
    audit_verdicts: int = 0
    gold_entities: dict[str, list[list[Any]]] = field(default_factory=dict)  # dialogue id -> [start, end, type]
    planted_defects: list[dict[str, Any]] = field(default_factory=list)
    image_dice: dict[str, dict[str, float]] = field(default_factory=dict)  # annotator -> mean Dice vs truth


# --- the writer -----------------------------------------------------------------------
def _timestamp(base: datetime, days: int, rng: np.random.Generator) -> str:
    return (base + timedelta(days=days, seconds=int(rng.integers(0, 8 * 3600)))).strftime("%Y-%m-%dT%H:%M:%S") + "+08:00"


def _provenance(annotator: str, when: str, tool: str, guideline: str) -> dict[str, str]:
    return {"annotator_id": annotator, "annotated_at": when, "tool": tool, "guideline_version": guideline}


def _review_thresholds() -> tuple[float, float]:
    """The review thresholds of the current guidelines (the expert decides what the pipeline will queue)."""
    from medllm_pipelines.lib.label.registry import load_guidelines

    guidelines = load_guidelines()
    return (float(guidelines[TEXT_GUIDELINE].review["review_threshold"]),
            float(guidelines[IMAGE_GUIDELINE].review["review_threshold_dice"]))


def _audit_sample(institution: str, item_id: str) -> bool:
    from medllm_pipelines.lib.label.audit import in_audit_sample
    from medllm_pipelines.lib.label.registry import load_guidelines

    audit = load_guidelines()[TRIAGE_GUIDELINE].audit
    return in_audit_sample(str(audit["seed"]), "triage_labels", institution, item_id, float(audit["sample_rate"]))


def write_annotation_files(tree: OutputTree, institution: Institution, plans: list[PatientPlan],
                           talk: DialogueOutput, imaging: ImagingOutput, seed: int,
                           rates: DefectRates | None = None) -> AnnotationTruth:
    """Write every annotation file of one institution; return its ground truth (also written to _truth)."""
    writer = _Writer(tree, institution.code, seed)
    documents = writer.brat(plans, talk)
    coco, shapes = writer.images(imaging)
    audit_rows = writer.triage_decisions(talk)
    if rates is not None and any(v > 0 for v in rates.as_dict().values()):
        _plant_defects(tree, writer.code, documents, coco, shapes, seed, writer.truth)
    for annotator, document in coco.items():
        tree.write(f"{writer.code}/annotations/coco/boxes-{annotator}.json", json_bytes(document, pretty=True))
    if writer.decisions:
        tree.write(f"{writer.code}/annotations/adjudication.jsonl", jsonl_bytes(writer.decisions))
    if audit_rows:
        tree.write(f"{writer.code}/annotations/audit.jsonl", jsonl_bytes(audit_rows))
    writer.truth.adjudications, writer.truth.audit_verdicts = len(writer.decisions), len(audit_rows)
    tree.write(f"{TRUTH_DIR}/{writer.code}.json", json_bytes(_truth_document(writer.truth), pretty=True))
    return writer.truth


class _Writer:
    """One institution's labelling office: three annotators, an expert who decides some disagreements."""

    def __init__(self, tree: OutputTree, code: str, seed: int) -> None:
        self.tree, self.code, self.seed = tree, code, seed
        self.truth = AnnotationTruth()
        self.decisions: list[dict[str, Any]] = []
        self.decide_rng = stream(seed, "annotations", "adjudication", code)
        self.base = datetime(2025, 11, 10, 9, 0)
        self.text_review, self.image_review = _review_thresholds()

    def _decide(self, item_id: str, label: str, guideline: str, day: int) -> None:
        self.decisions.append({"item_id": item_id, "annotator_id": EXPERT, "label": label,
                               "annotated_at": _timestamp(self.base, day, self.decide_rng), "tool": ADJUDICATION_TOOL,
                               "guideline_version": guideline})

    def brat(self, plans: list[PatientPlan], talk: DialogueOutput) -> dict[str, str]:
        """brat .txt/.ann over a subset of dialogues; returns the texts written (dialogue id -> text)."""
        person_of = {plan.registration.mrn: plan.registration.person for plan in plans}
        rng = stream(self.seed, "annotations", "brat", self.code)
        documents: dict[str, str] = {}
        for number, dialogue in enumerate(talk.dialogues):
            if rng.random() >= BRAT_DIALOGUE_RATE:
                continue
            person = person_of[dialogue["patient_mrn"]]
            name = person.display_name if dialogue["language"] == "zh" else person.name_en
            text, regions = dialogue_text(dialogue)
            gold = gold_entities(text, regions, dialogue["language"], name, person.phone)
            relations = gold_relations(gold, regions)
            doc = dialogue["dialogue_id"]
            documents[doc] = text
            self.tree.write(f"{self.code}/annotations/brat/{doc}.txt", text.encode("utf-8"))
            self.truth.gold_entities[doc] = [[e.start, e.end, e.type] for e in gold]
            spans: dict[str, set[tuple[int, int, str]]] = {}
            for offset, annotator in enumerate(ANNOTATORS):
                marked, kept = annotate_entities(gold, relations, ENTITY_ERRORS[annotator], rng)
                when = _timestamp(self.base + timedelta(minutes=5 * number), offset, rng)
                ann = brat_ann(text, marked, kept, _provenance(annotator, when, TEXT_TOOL, TEXT_GUIDELINE))
                self.tree.write(f"{self.code}/annotations/brat/{annotator}/{doc}.ann", ann.encode("utf-8"))
                spans[annotator] = {(e.start, e.end, e.type) for e in marked if e is not None}
            self.truth.documents += 1
            scores = [s for a, b in combinations(ANNOTATORS, 2) if not math.isnan(s := span_f1(spans[a], spans[b]))]
            if scores and min(scores) < self.text_review and self.decide_rng.random() < ADJUDICATION_RATE:
                gold_set = {(e.start, e.end, e.type) for e in gold}
                best = max(ANNOTATORS, key=lambda a: (span_f1(spans[a], gold_set), -ANNOTATORS.index(a)))
                self._decide(doc, f"accept:{best}", TEXT_GUIDELINE, 20)
        return documents

    def images(self, imaging: ImagingOutput) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[int, int, int]]]:
        """Masks (NIfTI or DICOM SEG) of every non-defective study with a lesion; COCO documents and study shapes."""
        rng = stream(self.seed, "annotations", "images", self.code)
        studies: dict[str, list[ImageTruth]] = {}
        for image in imaging.images:
            studies.setdefault(image.study, []).append(image)
        annotated = [s for s, images in sorted(studies.items())
                     if any(i.lesion for i in images) and not any(i.defect for i in images)]
        coco: dict[str, dict[str, Any]] = {a: {"images": [], "annotations": []} for a in ANNOTATORS}
        dice_vs_truth: dict[str, list[float]] = {a: [] for a in ANNOTATORS}
        shapes: dict[str, tuple[int, int, int]] = {}
        for study_number, study in enumerate(annotated):
            images = sorted(studies[study], key=lambda i: i.instance_number)
            truths = [np.load(self.tree.root / i.mask_file) for i in images]
            sources = [_read_dicom(self.tree.root / i.file) for i in images]
            uids = [str(ds.SOPInstanceUID) for ds in sources]
            shapes[study] = (int(sources[0].Rows), int(sources[0].Columns), len(images))
            per_annotator: dict[str, list[np.ndarray]] = {}
            for offset, annotator in enumerate(ANNOTATORS):
                slices = [perturb_mask(t, MASK_ERRORS[annotator], rng) for t in truths]
                per_annotator[annotator] = slices
                when = _timestamp(self.base + timedelta(hours=study_number), offset + 3, rng)
                if study_number < SEG_STUDIES_PER_INSTITUTION and annotator == SEG_ANNOTATOR:
                    provenance = _provenance(annotator, when, SEG_TOOL, IMAGE_GUIDELINE)
                    data = seg_bytes(sources, slices, provenance, ("medllm-synth", self.seed, self.code, study, annotator))
                    self.tree.write(f"{self.code}/annotations/seg/{annotator}/{study}.dcm", data)
                    self.truth.seg_objects += 1
                else:
                    provenance = _provenance(annotator, when, MASK_TOOL, IMAGE_GUIDELINE)
                    self.tree.write(f"{self.code}/annotations/masks/{annotator}/{study}.nii.gz",
                                    nifti_mask_bytes(slices, uids, provenance))
                    self.truth.mask_files += 1
                for image, uid, mask, gold_mask in zip(images, uids, slices, truths, strict=True):
                    add_coco_entry(coco[annotator], f"{study}/IM{image.instance_number:05d}.dcm", uid, mask, when)
                    if not math.isnan(score := mask_dice(mask, gold_mask)):
                        dice_vs_truth[annotator].append(score)
            self.truth.annotated_studies += 1
            for index, uid in enumerate(uids):
                scores = [s for a, b in combinations(ANNOTATORS, 2)
                          if not math.isnan(s := mask_dice(per_annotator[a][index], per_annotator[b][index]))]
                if scores and min(scores) < self.image_review and self.decide_rng.random() < ADJUDICATION_RATE:
                    best = max(ANNOTATORS, key=lambda a: (
                        _nan_to(mask_dice(per_annotator[a][index], truths[index]), 1.0), -ANNOTATORS.index(a)))
                    self._decide(uid, f"accept:{best}", IMAGE_GUIDELINE, 21)
        self.truth.image_dice = {a: round(float(np.mean(v)), 4) if v else None for a, v in dice_vs_truth.items()}  # type: ignore[misc]
        if not annotated:
            return {}, shapes
        self.truth.coco_files = len(ANNOTATORS)
        documents = {
            annotator: {
                "info": {"description": "lesion boxes", "tool": BOX_TOOL, "annotator_id": annotator,
                         "guideline_version": IMAGE_GUIDELINE, "date_created": _timestamp(self.base, 10 + offset, rng)},
                "licenses": [],
                "categories": [{"id": 1, "name": LESION_LABEL, "supercategory": "finding"}],
                **coco[annotator],
            }
            for offset, annotator in enumerate(ANNOTATORS)
        }
        return documents, shapes

    def triage_decisions(self, talk: DialogueOutput) -> list[dict[str, Any]]:
        """The expert decides most non-unanimous triage items; the auditor labels the hash-sampled ones."""
        votes: dict[str, dict[str, str]] = {}
        for row in talk.annotations:
            votes.setdefault(row["item_id"], {})[row["annotator_id"]] = row["label"]
        audit_rows = []
        for item, given in sorted(votes.items()):
            if len(set(given.values())) > 1 and self.decide_rng.random() < ADJUDICATION_RATE:
                self._decide(item, talk.gold[item], TRIAGE_GUIDELINE, 22)
            if _audit_sample(self.code, item):
                audit_rows.append({"item_id": item, "annotator_id": AUDITOR, "label": talk.gold[item],
                                   "annotated_at": _timestamp(self.base, 30, self.decide_rng), "tool": AUDIT_TOOL,
                                   "guideline_version": TRIAGE_GUIDELINE})
        return audit_rows


def _nan_to(value: float, replacement: float) -> float:
    return replacement if math.isnan(value) else value


def _read_dicom(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(path)


def _plant_defects(tree: OutputTree, code: str, documents: dict[str, str], coco: dict[str, dict[str, Any]],
                   shapes: dict[str, tuple[int, int, int]], seed: int, truth: AnnotationTruth) -> None:
    """Bad annotations the importer must reject, each with the reason it must give."""
    base = datetime(2025, 11, 28, 9, 0)
    if documents:
        doc = min(documents)
        text = documents[doc]
        path = f"{code}/annotations/brat/ann-02/{doc}.ann"
        existing = (tree.root / path).read_text("utf-8")
        first = next((line for line in existing.splitlines()
                      if line.startswith("T") and line.split("\t")[1].split(" ")[0] not in IDENTIFIER_TYPES), None)
        extra = [f"T901\tSYMPTOM {len(text) + 5} {len(text) + 9}\tdrop"]
        reasons = ["span_out_of_bounds"]
        if first is not None:
            _, rest, _ = first.split("\t")
            _, start, end = rest.split(" ")
            s, e = int(start), int(end)
            if e + 1 <= len(text):
                extra.append(f"T902\tSYMPTOM {s + 1} {e + 1}\t{text[s + 1:e + 1]}")
                reasons.append("overlapping_span")
            extra.append(f"T903\tVITAL_SIGN {s} {e}\t{text[s:e]}")
            reasons.append("unknown_label")
        tree.write(path, (existing + "\n".join(extra) + "\n").encode("utf-8"))
        for number, reason in enumerate(reasons):
            truth.planted_defects.append({"file": path, "line": len(existing.splitlines()) + number, "reason_code": reason})
        when = (base.strftime("%Y-%m-%dT%H:%M:%S")) + "+08:00"
        for folder, annotator, guideline, reason in (("ann-99", "ann-99", TEXT_GUIDELINE, "unknown_annotator"),
                                                      ("rework", "ann-01", "clinical-entities-v0.9",
                                                       "unknown_guideline_version")):
            bad = brat_ann(text, [], [], _provenance(annotator, when, TEXT_TOOL, guideline))
            bad += f"T1\tSYMPTOM 0 1\t{text[0:1]}\n"
            bad_path = f"{code}/annotations/brat/{folder}/{doc}.ann"
            tree.write(bad_path, bad.encode("utf-8"))
            truth.planted_defects.append({"file": bad_path, "line": None, "reason_code": reason})
    if shapes:
        study = max(shapes)
        rows, columns, count = shapes[study]
        uids = [entry["sop_instance_uid"] for entry in coco["ann-02"]["images"]
                if entry["file_name"].startswith(f"{study}/")]
        wrong = [np.zeros((rows // 2, columns // 2), dtype=np.uint8) for _ in range(count)]
        provenance = _provenance("ann-02", base.strftime("%Y-%m-%dT%H:%M:%S") + "+08:00", MASK_TOOL, IMAGE_GUIDELINE)
        bad_path = f"{code}/annotations/masks/rework/{study}.nii.gz"
        tree.write(bad_path, nifti_mask_bytes(wrong, uids, provenance))
        truth.planted_defects.append({"file": bad_path, "line": None, "reason_code": "wrong_shape"})
        document = coco["ann-03"]
        if document.get("images"):
            image = document["images"][0]
            document["annotations"].append({
                "id": len(document["annotations"]) + 1, "image_id": image["id"], "category_id": 1,
                "bbox": [image["width"] - 4, 2, 10, 6], "area": 60, "iscrowd": 0,
                "annotated_at": base.strftime("%Y-%m-%dT%H:%M:%S") + "+08:00"})
            truth.planted_defects.append({"file": f"{code}/annotations/coco/boxes-ann-03.json",
                                          "line": None, "reason_code": "box_out_of_bounds"})


def _truth_document(truth: AnnotationTruth) -> dict[str, Any]:
    return {
        "counts": {"brat_documents": truth.documents, "annotated_studies": truth.annotated_studies,
                   "nifti_mask_files": truth.mask_files, "dicom_seg_objects": truth.seg_objects,
                   "coco_files": truth.coco_files, "adjudications": truth.adjudications,
                   "audit_verdicts": truth.audit_verdicts},
        "annotators": list(ANNOTATORS),
        "guidelines": {"entities": TEXT_GUIDELINE, "images": IMAGE_GUIDELINE, "triage": TRIAGE_GUIDELINE},
        "tools": {"brat": TEXT_TOOL, "nifti": MASK_TOOL, "dicom_seg": SEG_TOOL, "coco": BOX_TOOL,
                  "triage": TRIAGE_TOOL},
        "entity_errors": {a: vars(e) for a, e in ENTITY_ERRORS.items()},
        "mask_errors": {a: vars(e) for a, e in MASK_ERRORS.items()},
        "mask_dice_vs_truth": truth.image_dice,
        "gold_entities": truth.gold_entities,
        "planted_defects": truth.planted_defects,
    }
