"""Scenario A3 (clause 6.2.3): a DICOM study in; lesion probability, segmentation, Grad-CAM overlay, a DICOM
SEG and a FHIR DiagnosticReport out.

The models are the imaging family's ``ImagingPredictor`` objects, loaded once by the caller. Every instance is
checked and de-identified before anything is computed (``instances``); identifiers never reach an output: the
SEG is built from allow-listed copies of the sources (``segmentation``), the report holds numbers, codes and
de-identified UIDs only (``report``), the PNG has no text chunks. Without a de-identifier the instance UIDs are
replaced by ``2.25`` UIDs keyed with a secret drawn per analyser, so they stay consistent between the SEG, the
report and the per-instance results of one analyser, and cannot be traced back to the sender's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medllm_pipelines.lib.deidentify.dicom import remap_uid
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.imaging.explain import (
    SEGMENTER_MULTIPLE,
    explained_network,
    heat_maps,
    overlay_png,
)
from medllm_pipelines.lib.scenarios.imaging.instances import (
    MEDIAN_SIZE,
    AcceptedInstance,
    accept_instance,
    PreprocessedSlice,
    pixel_spacing_mm,
)
from medllm_pipelines.lib.scenarios.imaging.report import diagnostic_report
from medllm_pipelines.lib.scenarios.imaging.segmentation import (
    identity_removed,
    reference_dataset,
    segmentation_dicom,
)
from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

NO_INSTANCES = "no_instances"
TOO_MANY_INSTANCES = "too_many_instances"
MIXED_STUDIES = "mixed_studies"
MIXED_IMAGE_SIZES = "mixed_image_sizes"
DUPLICATE_INSTANCE = "duplicate_instance"
STUDY_REASONS = (NO_INSTANCES, TOO_MANY_INSTANCES, MIXED_STUDIES, MIXED_IMAGE_SIZES, DUPLICATE_INSTANCE)
INSTANCE_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
SOFTWARE_VERSION = "medllm_pipelines imaging scenario 1"


def _model_entry(role: str, predictor: ImagingPredictor | None, given: Mapping[str, Any] | None) -> dict[str, Any]:
    if predictor is None:
        return {"loaded": False}
    given = dict(given or {})
    return {"loaded": True, "name": str(given.get("name") or predictor.spec.get("spec_id") or role),
            "version": str(given.get("version") or "unregistered"), "task": predictor.task,
            "family": str(predictor.spec.get("network", {}).get("family", "unknown")),
            "threshold": predictor.threshold}


class ImagingAnalyser:
    """Lesion analysis of one study's slices with a loaded classifier and/or segmentation model."""

    def __init__(self, classifier: ImagingPredictor | None, segmenter: ImagingPredictor | None, *,
                 models: dict | None = None, deidentify: Callable[[pydicom.Dataset], pydicom.Dataset] | None = None,
                 max_instances: int = 64, max_pixels: int = 1024 * 1024, denoise: bool = True) -> None:
        if classifier is None and segmenter is None:
            raise ValueError("the imaging analyser needs a classifier, a segmentation model or both")
        if classifier is not None and classifier.task != "classification":
            raise ValueError(f"the classifier is a {classifier.task} model")
        if segmenter is not None and segmenter.task != "segmentation":
            raise ValueError(f"the segmenter is a {segmenter.task} model")
        self.classifier, self.segmenter = classifier, segmenter
        self.deidentify = deidentify
        self.max_instances, self.max_pixels, self.denoise = int(max_instances), int(max_pixels), bool(denoise)
        models = models or {}
        self.models = {"classifier": _model_entry("classifier", classifier, models.get("classifier")),
                       "segmenter": _model_entry("segmenter", segmenter, models.get("segmenter"))}
        self.explained, self.layer, self.explanation = explained_network(classifier, segmenter)
        self.pad_to = 1 if classifier is not None else SEGMENTER_MULTIPLE
        self._uid_secret = secrets.token_bytes(32)
        predictor = classifier if classifier is not None else segmenter
        assert predictor is not None
        self.threshold = predictor.threshold
        self.method = "; ".join(f"{role} {entry['name']} version {entry['version']} ({entry['family']})"
                                for role, entry in self.models.items() if entry["loaded"])

    # ------------------------------------------------------------------ one instance
    def check_instance(self, data: bytes) -> pydicom.Dataset:
        """The de-identified dataset of an acceptable instance; refusals raise ScenarioInputError."""
        return self._accept(data).dataset

    def _accept(self, data: bytes) -> AcceptedInstance:
        return accept_instance(data, deidentify=self.deidentify, max_pixels=self.max_pixels, denoise=self.denoise)

    def _uid_key(self, uid: str) -> str:
        return hmac.new(self._uid_secret, uid.encode("utf-8"), hashlib.sha256).hexdigest()

    def _released_uids(self, ds: Dataset) -> dict[str, str]:
        """The UIDs the outputs name: the de-identifier's when it marked the instance, else keyed here."""
        keep = self.deidentify is not None and identity_removed(ds)
        return {keyword: str(ds.get(keyword)) if keep else remap_uid(str(ds.get(keyword)), self._uid_key)
                for keyword in INSTANCE_UID_KEYWORDS if ds.get(keyword)}

    # ------------------------------------------------------------------ a study
    def _accept_study(self, instances: Sequence[bytes]) -> list[AcceptedInstance]:
        if not instances:
            raise ScenarioInputError(NO_INSTANCES, "no DICOM instance was sent")
        if len(instances) > self.max_instances:
            raise ScenarioInputError(TOO_MANY_INSTANCES, f"{len(instances)} instances exceed the limit of "
                                                         f"{self.max_instances} per request")
        accepted = []
        for position, data in enumerate(instances):
            try:
                accepted.append(self._accept(data))
            except ScenarioInputError as error:
                raise ScenarioInputError(error.reason, f"instance {position + 1}: {error.detail}",
                                         status=error.status) from None
        if len({str(a.dataset.get("StudyInstanceUID", "")) for a in accepted}) != 1:
            raise ScenarioInputError(MIXED_STUDIES, "the instances belong to more than one study (or lack a "
                                                    "StudyInstanceUID): send one study per request")
        if len({str(a.dataset.get("SOPInstanceUID", "")) for a in accepted}) != len(accepted):
            raise ScenarioInputError(DUPLICATE_INSTANCE, "the same SOP instance was sent twice")
        if len({a.stored.shape for a in accepted}) != 1:
            raise ScenarioInputError(MIXED_IMAGE_SIZES, "the instances differ in rows and columns: one DICOM "
                                                        "Segmentation holds frames of one size; send them apart")
        return accepted

    def analyse(self, instances: Sequence[bytes]) -> dict[str, Any]:
        """Probability, mask, measurements and overlay per instance; the study's SEG and DiagnosticReport."""
        accepted = self._accept_study(instances)
        slices = [a.prepared for a in accepted]
        inputs = [s.model_input for s in slices]
        masks = self.segmenter.predict_masks(inputs) if self.segmenter is not None else None
        predictor = self.classifier if self.classifier is not None else self.segmenter
        assert predictor is not None
        probabilities = predictor.predict_proba(inputs)
        maps = heat_maps(self.explained, self.layer, inputs, pad_to=self.pad_to)
        uids = [self._released_uids(a.dataset) for a in accepted]
        results = []
        for k, (instance, prepared) in enumerate(zip(accepted, slices, strict=True)):
            mask = None if masks is None else np.asarray(masks[k], dtype=bool)
            results.append(self._instance_result(instance.dataset, prepared.modality_values, prepared.intensity_unit,
                                                 float(probabilities[k]), mask, maps[k], inputs[k], uids[k]))
        study_uid = uids[0]["StudyInstanceUID"]
        seg = None
        if masks is not None:
            references = [reference_dataset(a.dataset, u) for a, u in zip(accepted, uids, strict=True)]
            entry = self.models["segmenter"]
            seg = segmentation_dicom(references, masks, model_name=entry["name"], model_version=entry["version"],
                                     software_version=SOFTWARE_VERSION)
        return {
            "study_uid": study_uid,
            "instances": results,
            "segmentation_dicom": seg,
            "diagnostic_report": diagnostic_report(study_uid, results, method=self.method),
            "models": self.models,
            "preprocessing": self._preprocessing(accepted, slices),
            "explanation": self.explanation,
        }

    def _instance_result(self, ds: Dataset, values: np.ndarray, unit: str, probability: float,
                         mask: np.ndarray | None, heat: np.ndarray, model_input: np.ndarray,
                         uids: Mapping[str, str]) -> dict[str, Any]:
        spacing = pixel_spacing_mm(ds)
        pixels = None if mask is None else int(mask.sum())
        area = None if pixels is None or spacing is None else pixels * spacing[0] * spacing[1]
        mean = float(values[mask].mean()) if mask is not None and pixels else None
        return {
            "sop_instance_uid": uids["SOPInstanceUID"], "rows": int(values.shape[0]), "columns": int(values.shape[1]),
            "lesion_probability": probability, "lesion": probability >= self.threshold, "threshold": self.threshold,
            "lesion_area_mm2": area, "lesion_area_pixels": pixels,
            "area_note": None if pixels is None else ("PixelSpacing" if spacing is not None
                                                      else "no PixelSpacing: the area is in pixels only"),
            "mean_intensity_in_lesion": mean, "intensity_unit": unit,
            "overlay_png": overlay_png(model_input, heat, mask),
        }

    def _preprocessing(self, accepted: Sequence[AcceptedInstance], slices: Sequence[PreprocessedSlice]
                       ) -> dict[str, Any]:
        segmenter = self.segmenter.spec if self.segmenter is not None else None
        return {
            "deidentified": all(a.deidentified for a in accepted),
            "uids": ("as the de-identifier remapped them" if self.deidentify is not None
                     else "remapped to 2.25 UIDs keyed per analyser (no de-identifier given)"),
            "modality_lut": "RescaleSlope/RescaleIntercept applied (pydicom apply_modality_lut)",
            "monochrome1_inverted": sum(str(a.dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1"
                                        for a in accepted),
            "padding_pixels_filled": sum(s.padding_pixels for s in slices),
            "denoise": (f"{MEDIAN_SIZE}x{MEDIAN_SIZE} median filter (scipy.ndimage), on the model input only; "
                        "measurements read the unfiltered modality values") if self.denoise else "none",
            "normalisation": "per-slice z-score (MONAI NormalizeIntensity, images.normalise_slice), as in training",
            "geometry": ("whole slice at its own resolution, no resampling or cropping: the classifier pools "
                         "globally, as trained on whole slices"
                         + (f"; the segmenter's sliding window ({segmenter['roi_size']} px, overlap "
                            f"{segmenter.get('sw_overlap', 0.25)}) pads slices smaller than its window with zeros "
                            "after normalisation, as training's SpatialPad did" if segmenter else "")),
        }
