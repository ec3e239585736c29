"""Annotation files of the synthetic hospital: formats the labelling tools write, with controlled disagreement."""

from __future__ import annotations

import gzip
import json
from itertools import combinations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medllm_pipelines.lib.label.registry import load_guidelines, load_registry
from medllm_pipelines.lib.synth.annotation_files import ANNOTATORS, dialogue_text
from medllm_pipelines_tests.lib.synth.conftest import Hospital

INSTITUTIONS = ("hzsf", "rvic", "jhsq")


def _files(hospital: Hospital, pattern: str) -> list:
    return sorted(hospital.root.glob(pattern))


def _nifti(path):
    image = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    document = json.loads(image.header.extensions[0].get_content())
    return np.asanyarray(image.dataobj), document


def _truth(hospital: Hospital, institution: str) -> dict:
    return json.loads((hospital.root / "_truth" / "annotations" / f"{institution}.json").read_text("utf-8"))


def test_every_brat_annotation_pairs_with_its_text_and_names_its_provenance(clean_hospital: Hospital) -> None:
    registered, guidelines = load_registry().annotators, load_guidelines()
    anns = _files(clean_hospital, "*/annotations/brat/*/*.ann")
    assert anns
    for ann in anns:
        text = (ann.parent.parent / f"{ann.stem}.txt").read_text("utf-8")
        lines = ann.read_text("utf-8").splitlines()
        provenance = dict(item.split("=", 1) for item in lines[0].split("\t")[2].split(";"))
        assert provenance["annotator_id"] == ann.parent.name and provenance["annotator_id"] in registered
        assert provenance["guideline_version"] in guidelines
        for line in lines[1:]:
            if line.startswith("T"):
                _, spec, surface = line.split("\t")
                entity_type, start, end = spec.split(" ")
                assert text[int(start):int(end)] == surface
                assert entity_type in guidelines[provenance["guideline_version"]].entity_types


def test_non_identifier_spans_never_contain_a_name_or_phone(clean_hospital: Hospital) -> None:
    identities = clean_hospital.identities
    names = {n for row in identities for n in (row["name_zh"], row["name_en"]) if n}
    phones = {row["phone"] for row in identities}
    marked = 0
    for ann in _files(clean_hospital, "*/annotations/brat/*/*.ann"):
        for line in ann.read_text("utf-8").splitlines()[1:]:
            _, spec, surface = line.split("\t") if line.startswith("T") else ("", "", "")
            if spec.startswith(("PERSON", "PHONE")):
                marked += 1
            elif surface:
                assert not any(n in surface for n in names) and not any(p in surface for p in phones)
    assert marked > 0, "identifiers are annotated (offsets only reach the warehouse)"


def test_three_annotators_disagree_in_a_controlled_way(clean_hospital: Hospital) -> None:
    for institution in INSTITUTIONS:
        truth = _truth(clean_hospital, institution)
        dice = truth["mask_dice_vs_truth"]
        assert dice["ann-01"] > dice["ann-03"] > 0.6, "ann-03 is the noisy one, but still usable"
        for doc in list(truth["gold_entities"])[:5]:
            spans = {}
            for annotator in ANNOTATORS:
                ann = clean_hospital.root / institution / "annotations" / "brat" / annotator / f"{doc}.ann"
                spans[annotator] = {tuple(l.split("\t")[1].split(" ")) for l in ann.read_text("utf-8").splitlines() if l.startswith("T")}
            assert all(spans[a] or spans[b] for a, b in combinations(ANNOTATORS, 2))
    assert truth["planted_defects"] == [], "a clean hospital plants no bad annotations"


def test_masks_reference_the_study_images_by_sop_instance_uid(clean_hospital: Hospital) -> None:
    masks = _files(clean_hospital, "*/annotations/masks/*/study-*.nii.gz")
    assert masks
    for path in masks[:12]:
        data, document = _nifti(path)
        institution = path.relative_to(clean_hospital.root).parts[0]
        study = clean_hospital.root / institution / "dicom" / path.name.replace(".nii.gz", "")
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(study.glob("*.dcm"))]
        assert document["sop_instance_uids"] == [str(ds.SOPInstanceUID) for ds in sources]
        assert data.shape == (sources[0].Columns, sources[0].Rows, len(sources))
        assert document["annotator_id"] == path.parent.name and document["tool"] and document["annotated_at"]


def test_dicom_seg_objects_are_built_with_highdicom_from_the_source_images(clean_hospital: Hospital) -> None:
    import highdicom as hd

    segs = _files(clean_hospital, "*/annotations/seg/*/*.dcm")
    assert len(segs) >= 3
    seg = hd.seg.segread(segs[0])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    institution = segs[0].relative_to(clean_hospital.root).parts[0]
    study = clean_hospital.root / institution / "dicom" / segs[0].stem
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study.glob("*.dcm")}
    assert {sop for _, _, sop in seg.get_source_image_uids()} == uids
    assert str(seg.ContentCreatorName).strip("^") == "ann-01" and "lesion-annotation-v1.0" in seg.ContentDescription


def test_coco_boxes_lie_inside_their_images(clean_hospital: Hospital) -> None:
    for path in _files(clean_hospital, "*/annotations/coco/boxes-*.json"):
        document = json.loads(path.read_text("utf-8"))
        assert document["info"]["annotator_id"] in ANNOTATORS
        images = {image["id"]: image for image in document["images"]}
        assert all(image["sop_instance_uid"].startswith("2.25.") for image in images.values())
        for annotation in document["annotations"]:
            x, y, w, h = annotation["bbox"]
            image = images[annotation["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]


def test_expert_decisions_and_audit_verdicts_follow_the_label_jsonl_schema(clean_hospital: Hospital) -> None:
    registry = load_registry()
    for institution in INSTITUTIONS:
        decisions = clean_hospital.jsonl(f"{institution}/annotations/adjudication.jsonl")
        audit = clean_hospital.jsonl(f"{institution}/annotations/audit.jsonl")
        assert decisions and {registry.role_of(r["annotator_id"]) for r in decisions} == {"adjudicator"}
        assert {registry.role_of(r["annotator_id"]) for r in audit} <= {"auditor"}
        for row in decisions + audit:
            assert {"item_id", "annotator_id", "label", "annotated_at", "tool", "guideline_version"} <= set(row)


def test_planted_bad_annotations_come_with_the_reason_to_expect(defective_hospital: Hospital) -> None:
    reasons = {d["reason_code"] for i in INSTITUTIONS for d in _truth(defective_hospital, i)["planted_defects"]}
    assert reasons == {"span_out_of_bounds", "overlapping_span", "unknown_label", "unknown_annotator",
                       "unknown_guideline_version", "wrong_shape", "box_out_of_bounds"}


def test_brat_text_is_the_dialogue_with_speaker_prefixes() -> None:
    text, regions = dialogue_text({"language": "en", "turns": [{"speaker": "assistant", "text": "Hi."},
                                                               {"speaker": "patient", "text": "I cough."}]})
    assert text == "Assistant: Hi.\nPatient: I cough.\n"
    assert [text[s:e] for s, e in regions] == ["I cough."]


@pytest.mark.parametrize("institution", INSTITUTIONS)
def test_annotation_files_classify_as_annotation_kinds(clean_hospital: Hospital, institution: str) -> None:
    from medllm_pipelines.lib.ingest.landing import classify

    kinds = {classify(p.relative_to(clean_hospital.root).as_posix())
             for p in (clean_hospital.root / institution / "annotations").rglob("*") if p.is_file()}
    assert kinds == {"annotations", "brat_ann", "brat_text", "nifti_mask", "dicom_seg", "coco"}
