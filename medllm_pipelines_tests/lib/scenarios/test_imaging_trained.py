"""Scenario A3 with real models: the tiny seeded U-Net and DenseNet of the training tests (trained here in seconds on
the synthetic hospital's slices), served a DICOM study drawn by the same renderer. The served path must give the
masks and probabilities the training path gives on the same pixels (same z-score), and find the lesions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medllm_pipelines.lib.scenarios.imaging import ImagingAnalyser
from medllm_pipelines.lib.scenarios.imaging.segmentation import read_segmentation
from medllm_pipelines.lib.synth.dicom import PIXEL_SPACING_MM, render_slice
from medllm_pipelines.lib.train.imaging.images import dice_and_iou
from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor
from medllm_pipelines.lib.train.imaging.training import CLASSIFICATION, SEGMENTATION, ImagingConfig, train_imaging_model
from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import PLANTED_NEEDLES, dicom_dataset, part10
from medllm_pipelines_tests.lib.train.test_imaging import (
    TINY_DENSENET,
    TINY_TRAINING,
    TINY_UNET,
    synthetic_lesion_frame,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImagingPredictor]:
    folder = tmp_path_factory.mktemp("slices")
    frame = synthetic_lesion_frame(folder)
    torch.set_num_threads(1)
    predictors = {}
    for task, network in ((SEGMENTATION, TINY_UNET), (CLASSIFICATION, TINY_DENSENET)):
        config = ImagingConfig.from_spec("tiny", task, network, TINY_TRAINING[task])
        result = train_imaging_model(frame, folder, config, tmp_path_factory.mktemp(task), spec_id="tiny",
                                     dataset_version="v" * 64)
        predictors[task] = ImagingPredictor.load(result.model_dir)
    return predictors


@pytest.fixture(scope="module")
def held_out_study() -> tuple[list[bytes], list[np.ndarray], list[np.ndarray]]:
    """Eight slices the models never saw (another seed), CT stored with the HU offset, MR without; lesions on half."""
    rng = np.random.default_rng(2024)
    files, truths, stored = [], [], []
    for k in range(8):
        modality = "CT" if k % 4 < 2 else "MR"
        pixels, mask = render_slice(modality, k % 2 == 0, rng)
        files.append(part10(dicom_dataset(pixels, modality=modality, instance=k + 1, spacing=PIXEL_SPACING_MM)))
        truths.append(mask.astype(bool))
        stored.append(pixels)
    return files, truths, stored


def _seg_masks(result: dict) -> list[np.ndarray]:
    seg = read_segmentation(result["segmentation_dicom"])
    return [seg.get_pixels_by_source_instance([i["sop_instance_uid"]])[0, :, :, 0].astype(bool)
            for i in result["instances"]]


def test_without_denoising_the_served_models_answer_exactly_as_on_the_training_pixels(trained, held_out_study) -> None:
    files, _, stored = held_out_study
    segmenter, classifier = trained[SEGMENTATION], trained[CLASSIFICATION]
    result = ImagingAnalyser(classifier, segmenter, denoise=False).analyse(files)
    for served, direct in zip(_seg_masks(result), segmenter.predict_masks(stored), strict=True):
        assert np.array_equal(served, direct)
    served = [i["lesion_probability"] for i in result["instances"]]
    assert served == pytest.approx(list(classifier.predict_proba(stored)), abs=1e-5)


def test_the_served_study_finds_its_lesions(trained, held_out_study) -> None:
    files, truths, _ = held_out_study
    result = ImagingAnalyser(trained[CLASSIFICATION], trained[SEGMENTATION]).analyse(files)
    scores = [dice_and_iou(mask, truth) for mask, truth in zip(_seg_masks(result), truths, strict=True)]
    dice = np.mean([s[0] for s in scores if s is not None])
    assert dice > 0.4  # chance (random pixels) ~0.03; the training tests hold the same model to 0.4
    probabilities = np.array([i["lesion_probability"] for i in result["instances"]])
    lesion = np.array([t.any() for t in truths])
    assert probabilities[lesion].mean() > probabilities[~lesion].mean()
    found = [i for i in result["instances"] if i["lesion_area_pixels"]]
    assert found and all(i["lesion_area_mm2"] == pytest.approx(i["lesion_area_pixels"] * PIXEL_SPACING_MM ** 2)
                         for i in found)
    everything = result["segmentation_dicom"] + str(result["diagnostic_report"]).encode("utf-8")
    assert not any(needle.encode("utf-8") in everything for needle in PLANTED_NEEDLES)


def test_the_median_filter_costs_the_trained_segmenter_little(trained, held_out_study) -> None:
    files, truths, _ = held_out_study
    dice = {}
    for denoise in (True, False):
        result = ImagingAnalyser(None, trained[SEGMENTATION], denoise=denoise).analyse(files)
        scores = [dice_and_iou(m, t) for m, t in zip(_seg_masks(result), truths, strict=True)]
        dice[denoise] = np.mean([s[0] for s in scores if s is not None])
    assert dice[True] > dice[False] - 0.1


def test_grad_cam_of_the_trained_classifier_is_a_map_per_instance(trained, held_out_study) -> None:
    from medllm_pipelines.lib.scenarios.imaging.explain import explained_network, heat_maps

    _, _, stored = held_out_study
    network, layer, sentence = explained_network(trained[CLASSIFICATION], None)
    maps = heat_maps(network, layer, [s.astype(np.float32) for s in stored[:2]])
    assert [m.shape for m in maps] == [(64, 64)] * 2 and all(0.0 <= m.min() and m.max() <= 1.0 for m in maps)
    assert "class_layers.relu" in sentence  # the layer the evaluation report explains
