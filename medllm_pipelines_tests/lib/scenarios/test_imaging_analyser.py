"""Scenario A3, a study: per-instance findings with an overlay, a DICOM SEG highdicom reads back and that points
at the sources, a FHIR DiagnosticReport that validates, and no planted identifier in any output.

The models are real ``ImagingPredictor`` objects around tiny hand-set networks with a known answer: the
segmenter marks pixels whose z-score exceeds 1.6 (the discs of test_imaging_instances sit near 2.2, the body near
1.0) and the classifier fires on the brightest 3x3 neighbourhood; both run through the predictor's real sliding
window, z-score and Grad-CAM paths."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from torch import nn

from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.imaging import ImagingAnalyser, default_deidentifier
from medllm_pipelines.lib.scenarios.imaging.segmentation import read_segmentation
from medllm_pipelines.lib.train.imaging.images import dice_and_iou
from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor
from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import (
    PLANTED_NEEDLES,
    dicom_dataset,
    disc_instance,
    disc_slice,
    part10,
)

Z_CUT = 1.6
STUDY = "1.2.826.0.1.3680043.10.1.77"


class ThresholdSegmenter(nn.Module):
    """Lesion logit 10 * (z - 1.6), background 0: a 1x1 convolution with set weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 10.0]).reshape(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -10.0 * Z_CUT]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


class BrightSpotClassifier(nn.Module):
    """Logit 6 * (brightest 3x3 mean z - 1.6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 9.0)
            self.conv.bias.fill_(-Z_CUT)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 6.0 * torch.amax(self.conv(images), dim=(2, 3))


def segmenter() -> ImagingPredictor:
    return ImagingPredictor(ThresholdSegmenter(), {"task": "segmentation", "roi_size": 32, "sw_overlap": 0.25,
                                                   "network": {"family": "unet"}, "threshold": 0.5})


def classifier() -> ImagingPredictor:
    return ImagingPredictor(BrightSpotClassifier(), {"task": "classification", "network": {"family": "densenet"},
                                                     "threshold": 0.5})


MODELS = {"classifier": {"name": "lesion_classifier", "version": "3"},
          "segmenter": {"name": "lesion_segmentation", "version": "5"}}


@pytest.fixture(scope="module")
def analyser() -> ImagingAnalyser:
    return ImagingAnalyser(classifier(), segmenter(), models=MODELS)


def study(n: int = 3, *, modality: str = "CT", study_uid: str = STUDY, **attributes: object
          ) -> tuple[list[bytes], list[np.ndarray]]:
    """``n`` instances of one study, lesions on the even ones; their bytes and true masks."""
    files, truths = [], []
    for k in range(n):
        pixels, mask = disc_slice(modality, centre=(30.0 + 2 * k, 22.0 + 4 * k), radius=5.0 + k, lesion=k % 2 == 0,
                                  seed=k)
        files.append(part10(dicom_dataset(pixels, modality=modality, study_uid=study_uid, instance=k + 1,
                                          **attributes)))
        truths.append(mask)
    return files, truths


@pytest.fixture(scope="module")
def analysed(analyser: ImagingAnalyser) -> tuple[dict, list[np.ndarray]]:
    files, truths = study()
    return analyser.analyse(files), truths


def _all_bytes(result: dict) -> bytes:
    """Every output of an analysis as bytes: the SEG, the JSON parts and each PNG."""
    plain = {k: v for k, v in result.items() if k not in ("segmentation_dicom", "instances")}
    instances = [{k: v for k, v in i.items() if k != "overlay_png"} for i in result["instances"]]
    return (result["segmentation_dicom"] + json.dumps([plain, instances], default=str).encode("utf-8")
            + b"".join(i["overlay_png"] for i in result["instances"]))


# --- findings ------------------------------------------------------------------------------------
def test_each_instance_gets_its_probability_mask_measurements_and_overlay(analysed) -> None:
    result, truths = analysed
    assert [i["lesion"] for i in result["instances"]] == [True, False, True]
    for item, truth in zip(result["instances"], truths, strict=True):
        assert (item["rows"], item["columns"]) == (64, 64) and item["threshold"] == 0.5
        assert (item["lesion_probability"] > 0.9) == bool(truth.any())
        if truth.any():
            assert item["lesion_area_pixels"] == pytest.approx(truth.sum(), rel=0.15)
            assert item["lesion_area_mm2"] == pytest.approx(item["lesion_area_pixels"] * 0.7 * 0.7)
            assert item["mean_intensity_in_lesion"] == pytest.approx(40 + 600, abs=25)  # HU of the disc
            assert item["intensity_unit"] == "HU" and item["area_note"] == "PixelSpacing"
        else:
            assert item["lesion_area_pixels"] == 0 and item["mean_intensity_in_lesion"] is None
        picture = Image.open(io.BytesIO(item["overlay_png"]))
        assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (256, 256)
        assert not picture.info.get("dpi") and not any(chunk in item["overlay_png"]
                                                       for chunk in (b"tEXt", b"iTXt", b"zTXt", b"eXIf"))


def test_the_segmentation_matches_the_disc(analysed) -> None:
    result, truths = analysed
    seg = read_segmentation(result["segmentation_dicom"])
    for item, truth in zip(result["instances"], truths, strict=True):
        if truth.any():
            mask = seg.get_pixels_by_source_instance([item["sop_instance_uid"]])[0, :, :, 0].astype(bool)
            dice, _ = dice_and_iou(mask, truth)
            assert dice > 0.9


def test_the_overlay_outlines_the_lesion_and_warms_where_the_classifier_looked(analysed) -> None:
    result, truths = analysed
    pixels = np.asarray(Image.open(io.BytesIO(result["instances"][0]["overlay_png"])))[::4, ::4].astype(int)
    green = (pixels[..., 1] == 255) & (pixels[..., 0] == 0) & (pixels[..., 2] == 0)
    rows, columns = np.nonzero(truths[0])
    assert green.any() and np.all(np.isin(np.nonzero(green)[0], np.arange(rows.min() - 1, rows.max() + 2)))
    warm = pixels[..., 0] - pixels[..., 2]  # jet: red where Grad-CAM is high
    far = np.ones_like(truths[0])
    far[max(rows.min() - 8, 0):rows.max() + 9, max(columns.min() - 8, 0):columns.max() + 9] = False
    assert warm[truths[0]].mean() > warm[far].mean() + 20


def test_the_seg_reads_back_binary_with_one_lesion_segment_referencing_every_source(analysed) -> None:
    result, _ = analysed
    seg = read_segmentation(result["segmentation_dicom"])
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == result["study_uid"]
    assert seg.get_segment_numbers() == [1]
    description = seg.get_segment_description(1)
    assert description.segment_label == "Lesion"
    assert description.segmented_property_type.value == "52988006"  # SNOMED CT lesion
    assert description.segmented_property_category.value == "49755003"  # morphologically abnormal structure
    assert description.algorithm_identification[0].AlgorithmName == "lesion_segmentation"
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == {i["sop_instance_uid"] for i in result["instances"]}


def test_the_diagnostic_report_validates_and_carries_each_finding(analysed) -> None:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    result, _ = analysed
    report = result["diagnostic_report"]
    DiagnosticReport.model_validate(report)
    assert report["status"] == "preliminary"
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{result['study_uid']}"
    contained = {o["id"]: o for o in report["contained"]}
    assert {r["reference"].lstrip("#") for r in report["result"]} == set(contained)
    first = contained["instance-1-lesion-probability"]
    assert first["valueQuantity"]["value"] == pytest.approx(result["instances"][0]["lesion_probability"], abs=1e-4)
    assert first["interpretation"][0]["coding"][0]["code"] == "POS"
    assert contained["instance-2-lesion-probability"]["interpretation"][0]["coding"][0]["code"] == "NEG"
    assert contained["instance-1-lesion-area"]["valueQuantity"]["code"] == "mm2"
    assert contained["instance-1-lesion-mean-intensity"]["valueQuantity"]["code"] == "[hnsf'U]"
    assert "dataAbsentReason" in contained["instance-2-lesion-mean-intensity"]
    assert "a lesion is suspected on 2" in report["conclusion"]


def test_models_and_preprocessing_say_what_was_done(analysed) -> None:
    result, _ = analysed
    assert result["models"]["classifier"] | {"name": "lesion_classifier", "version": "3", "loaded": True} \
        == result["models"]["classifier"]
    steps = result["preprocessing"]
    assert "median" in steps["denoise"] and "z-score" in steps["normalisation"] and "Rescale" in steps["modality_lut"]
    assert steps["deidentified"] is False and "remapped" in steps["uids"]
    assert "classifier" in result["explanation"]


# --- identifiers --------------------------------------------------------------------------------
def test_no_planted_identifier_or_source_uid_reaches_any_output_without_a_deidentifier(analysed) -> None:
    result, _ = analysed
    everything = _all_bytes(result)
    for needle in (*PLANTED_NEEDLES, STUDY):
        assert needle.encode("utf-8") not in everything, needle
    seg = pydicom.dcmread(io.BytesIO(result["segmentation_dicom"]))
    assert not str(seg.PatientName) and not seg.PatientID and not seg.get("PatientBirthDate")
    assert "InstitutionName" not in seg and not seg.get("AccessionNumber")
    for equipment in seg.get("ContributingEquipmentSequence", []):
        assert "InstitutionName" not in equipment


def test_uids_stay_consistent_within_one_analyser(analyser: ImagingAnalyser, analysed) -> None:
    result, _ = analysed
    again = analyser.analyse(study()[0])
    assert again["study_uid"] == result["study_uid"]
    assert [i["sop_instance_uid"] for i in again["instances"]] == [i["sop_instance_uid"] for i in result["instances"]]


def test_the_project_deidentifier_gives_its_pseudonym_and_uids_and_still_no_identifier() -> None:
    keyed = lambda message: hashlib.sha256(b"test key\x1f" + message.encode("utf-8")).hexdigest()  # noqa: E731
    deidentify = default_deidentifier(keyed, "PSN-9F2C")
    analyser = ImagingAnalyser(classifier(), segmenter(), models=MODELS, deidentify=deidentify)
    files, _ = study(2)
    result = analyser.analyse(files)
    assert result["preprocessing"]["deidentified"] is True
    seg = pydicom.dcmread(io.BytesIO(result["segmentation_dicom"]))
    assert seg.PatientID == "PSN-9F2C" and seg.PatientIdentityRemoved == "YES"
    assert seg.StudyDate != "20240311"  # the patient's date shift
    # the same key gives the same UIDs as the research release: a second analyser agrees
    other = ImagingAnalyser(classifier(), segmenter(), deidentify=default_deidentifier(keyed, "PSN-9F2C"))
    assert other.analyse(files)["study_uid"] == result["study_uid"] != STUDY
    everything = _all_bytes(result)
    for needle in (*PLANTED_NEEDLES, STUDY):
        assert needle.encode("utf-8") not in everything, needle


def test_a_deidentifier_that_leaves_identifiers_does_not_leak_them() -> None:
    analyser = ImagingAnalyser(classifier(), segmenter(), deidentify=lambda ds: ds)
    result = analyser.analyse(study(1)[0])
    everything = _all_bytes(result)
    for needle in (*PLANTED_NEEDLES, STUDY):
        assert needle.encode("utf-8") not in everything, needle


def test_the_profile_quarantine_refuses_an_instance_the_header_check_let_through() -> None:
    keyed = lambda message: hashlib.sha256(message.encode("utf-8")).hexdigest()  # noqa: E731
    analyser = ImagingAnalyser(classifier(), segmenter(), deidentify=default_deidentifier(keyed, "PSN-1"))
    with pytest.raises(ScenarioInputError) as caught:
        analyser.check_instance(disc_instance(BurnedInAnnotation="YES"))
    assert caught.value.reason == "burned_in_annotation"


# --- study refusals and variants ---------------------------------------------------------------
@pytest.mark.parametrize(("build", "reason"), [
    (lambda: [], "no_instances"),
    (lambda: study(1)[0] + study(1, study_uid="1.2.826.0.1.3680043.10.1.78")[0], "mixed_studies"),
    (lambda: study(1)[0] * 2, "duplicate_instance"),
    (lambda: study(5)[0], "too_many_instances"),
    (lambda: [study(1)[0][0], part10(dicom_dataset(np.zeros((32, 48), np.uint16), study_uid=STUDY, instance=2))],
     "mixed_image_sizes"),
])
def test_a_request_that_is_not_one_study_of_one_size_is_refused(build, reason) -> None:
    analyser = ImagingAnalyser(classifier(), segmenter(), max_instances=4)
    with pytest.raises(ScenarioInputError) as caught:
        analyser.analyse(build())
    assert (caught.value.reason, caught.value.status) == (reason, 422)


def test_a_bad_instance_in_a_study_is_refused_naming_its_position(analyser: ImagingAnalyser) -> None:
    files = study(2)[0] + [b"not dicom"]
    with pytest.raises(ScenarioInputError) as caught:
        analyser.analyse(files)
    assert (caught.value.reason, caught.value.status) == ("not_dicom", 415) and "instance 3" in caught.value.detail


def test_without_pixel_spacing_the_area_is_in_pixels_and_says_so() -> None:
    analyser = ImagingAnalyser(classifier(), segmenter())
    files, truths = study(1, modality="MR", spacing=None)
    item = analyser.analyse(files)["instances"][0]
    assert item["lesion_area_mm2"] is None and item["lesion_area_pixels"] == pytest.approx(truths[0].sum(), rel=0.2)
    assert "pixels" in item["area_note"] and item["intensity_unit"] == "stored value units"
    report = analyser.analyse(files)["diagnostic_report"]
    area = next(o for o in report["contained"] if o["id"] == "instance-1-lesion-area")
    assert area["valueQuantity"]["code"] == "{pixels}"


def test_a_segmenter_alone_scores_explains_and_segments() -> None:
    result = ImagingAnalyser(None, segmenter()).analyse(study(2)[0])
    assert [i["lesion"] for i in result["instances"]] == [True, False]
    assert result["segmentation_dicom"] and "Seg-Grad-CAM" in result["explanation"]
    assert result["models"]["classifier"] == {"loaded": False}


def test_a_classifier_alone_gives_no_segmentation() -> None:
    result = ImagingAnalyser(classifier(), None).analyse(study(2)[0])
    assert result["segmentation_dicom"] is None
    assert [i["lesion_area_pixels"] for i in result["instances"]] == [None, None]
    ids = {o["id"] for o in result["diagnostic_report"]["contained"]}
    assert ids == {"instance-1-lesion-probability", "instance-2-lesion-probability"}


def test_models_of_the_wrong_task_or_none_at_all_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="needs a classifier"):
        ImagingAnalyser(None, None)
    with pytest.raises(ValueError, match="segmenter is a classification"):
        ImagingAnalyser(None, classifier())


def test_pydicom_test_files_from_other_writers_are_analysed() -> None:
    from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import TEST_FILES

    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    result = ImagingAnalyser(classifier(), segmenter()).analyse([data])
    item = result["instances"][0]
    assert (item["rows"], item["columns"]) == (128, 128) and item["intensity_unit"] == "HU"
    assert b"CompressedSamples" not in _all_bytes(result)  # the file's patient name
    assert read_segmentation(result["segmentation_dicom"]).number_of_frames == 1
