"""The imaging models (issue 11 item 2) without Dagster: specs to configs, bad specs refused naming the spec, a tiny
seeded training on synthetic slices that is deterministic and beats chance, the saved model folder read back, the
intensity-threshold baseline, data needs said rather than raised, and a failing training leaving a FAILED run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.label.images import mask_to_rle
from medllm_pipelines.lib.synth.dicom import render_slice
from medllm_pipelines.lib.train.imaging.baselines import classification_baseline, segmentation_baseline
from medllm_pipelines.lib.train.imaging.predictor import MODEL_SPEC_FILENAME, ImagingPredictor
from medllm_pipelines.lib.train.imaging.pyfunc import predictions
from medllm_pipelines.lib.train.imaging.runs import imaging_data_needs, imaging_task, imaging_training_config
from medllm_pipelines.lib.train.imaging.training import (
    CLASSIFICATION,
    SEGMENTATION,
    ImagingConfig,
    split_images,
    train_imaging_model,
)
from medllm_pipelines.lib.train.optim import UnknownComponentError

# Small networks and few epochs: each training a few seconds on one core, far above chance on these slices.
TINY_UNET = {"family": "unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
TINY_DENSENET = {"family": "densenet", "init_features": 16, "growth_rate": 8, "block_config": [2, 2, 2]}
TINY_TRAINING = {
    SEGMENTATION: {"optimizer": "adam", "lr": 0.01, "batch_size": 4, "max_epochs": 10, "early_stopping_patience": 10,
                   "crop_size": 32, "crops_per_image": 2, "seed": 3},
    CLASSIFICATION: {"optimizer": "adam", "lr": 0.001, "batch_size": 8, "max_epochs": 12, "early_stopping_patience": 12,
                     "seed": 3},
}
SPLIT_SIZES = {"train": 40, "validation": 12, "test": 12}


def synthetic_lesion_frame(folder: Path, seed: int = 0, *, lesions: bool = True) -> pd.DataFrame:
    """Slices drawn by the synthetic hospital's renderer (lib/synth/dicom.render_slice), half of them with a lesion,
    saved as .npy in ``folder``; rows shaped like curate/lesion_segmentation_dataset joined with its splits."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in SPLIT_SIZES.items():
        for index in range(count):
            lesion = lesions and index % 2 == 0
            pixels, mask = render_slice("CT" if index % 4 < 2 else "MR", lesion, rng)
            image_id = f"img-{split}-{index:02d}"
            np.save(folder / f"{image_id}.npy", pixels)
            rows.append({"image_id": image_id, "study_key": f"s-{split}-{index}", "patient_pseudonym": f"p-{split}-{index}",
                         "modality": "CT", "institution": "H1", "rows": 64, "columns": 64, "mask_rle": mask_to_rle(mask),
                         "lesion": bool(mask.any()), "lesion_pixels": int(mask.sum()), "pixel_file": f"{image_id}.npy",
                         "split": split})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    folder = tmp_path_factory.mktemp("slices")
    return synthetic_lesion_frame(folder), folder


def _train(slices, task: str, network: dict, output_dir: Path):
    frame, folder = slices
    torch.set_num_threads(1)
    config = ImagingConfig.from_spec("tiny", task, network, TINY_TRAINING[task])
    return train_imaging_model(frame, folder, config, output_dir, spec_id="tiny", dataset_version="v" * 64)


@pytest.fixture(scope="module")
def segmentation_pair(slices, tmp_path_factory):
    """The same seeded segmentation trained twice, in two folders."""
    return [_train(slices, SEGMENTATION, TINY_UNET, tmp_path_factory.mktemp(f"seg{i}")) for i in range(2)]


@pytest.fixture(scope="module")
def classifier(slices, tmp_path_factory):
    return _train(slices, CLASSIFICATION, TINY_DENSENET, tmp_path_factory.mktemp("cls"))


# --- specs -> configs ------------------------------------------------------------------------
@pytest.mark.parametrize(("spec_id", "task", "family", "registry_family"),
                         [("lesion_segmentation", SEGMENTATION, "unet", "unet"),
                          ("lesion_classifier", CLASSIFICATION, "densenet", "cnn")])
def test_each_imaging_spec_gives_a_demo_and_a_larger_full_config(spec_id, task, family, registry_family) -> None:
    spec = load_spec(spec_id)
    demo, full = imaging_training_config(spec, "demo"), imaging_training_config(spec, "full")
    assert imaging_task(spec) == demo.task == task
    assert demo.network["family"] == full.network["family"] == family and demo.registry_family == registry_family
    assert full.max_epochs > demo.max_epochs
    assert demo.network != full.network  # the full size is a larger network, not only more epochs
    assert spec.metrics and spec.baseline == "intensity_threshold" and spec.min_rows >= 10


def test_the_classifier_spec_is_the_one_compression_config_names() -> None:
    from medllm_pipelines.lib.train.compression import load_compression_config

    assert load_spec("lesion_classifier").id == "lesion_classifier"
    assert load_compression_config("lesion_classifier") is not None


@pytest.mark.parametrize(("block", "change", "error", "names"), [
    ("network", {"family": "vit"}, UnknownComponentError, "network 'vit'"),
    ("network", {"family": "unet", "kernel": 5}, ValueError, "kernel"),
    ("training", {"optimizer": "lion"}, UnknownComponentError, "optimizer 'lion'"),
    ("training", {"epochs": 3}, ValueError, "epochs"),
    ("training", {"augmentation": {"elastic_prob": 0.5}}, ValueError, "elastic_prob"),
])
def test_a_bad_imaging_spec_is_refused_naming_the_spec_and_the_cause(block, change, error, names) -> None:
    spec = load_spec("lesion_segmentation")
    bad = dataclasses.replace(spec, **{block: {**getattr(spec, block), **change}})
    with pytest.raises(error, match=f"spec lesion_segmentation.*{names}"):
        imaging_training_config(bad, "demo")


def test_the_imaging_spec_carries_its_hardware_and_an_unknown_strategy_is_refused_naming_the_spec() -> None:
    spec = load_spec("lesion_classifier")
    with_hardware = dataclasses.replace(spec, training={**spec.training, "hardware": {"precision": "32-true"}})
    assert imaging_training_config(with_hardware, "demo").hardware == {"precision": "32-true"}
    bad = dataclasses.replace(spec, training={**spec.training, "hardware": {"strategy": "mpi"}})
    with pytest.raises(UnknownComponentError, match="spec lesion_classifier.*strategy 'mpi'"):
        imaging_training_config(bad, "demo")


def test_a_spec_whose_task_is_not_imaging_is_refused() -> None:
    with pytest.raises(ValueError, match="spec t2d_risk: task 'regression' is not an imaging task"):
        imaging_training_config(dataclasses.replace(load_spec("t2d_risk"), task="regression"))


# --- data needs ------------------------------------------------------------------------------
def test_data_needs_say_why_a_small_or_lesion_free_hospital_trains_nothing(tmp_path: Path) -> None:
    spec = load_spec("lesion_segmentation")
    frame = synthetic_lesion_frame(tmp_path)
    assert imaging_data_needs(spec, frame, SEGMENTATION).met
    few = imaging_data_needs(spec, frame.head(spec.min_rows - 1), SEGMENTATION)
    assert not few.met and few.reason == f"spec lesion_segmentation needs {spec.min_rows} rows, has {spec.min_rows - 1}"
    lesion_free = frame.assign(lesion=False)
    needs = imaging_data_needs(spec, lesion_free, SEGMENTATION)
    assert not needs.met and "no lesion" in needs.reason and needs.as_metadata()["data_needs_met"] is False
    one_class = imaging_data_needs(load_spec("lesion_classifier"), lesion_free, CLASSIFICATION)
    assert "one class" in one_class.reason
    no_validation = imaging_data_needs(spec, frame[frame["split"] != "validation"], SEGMENTATION)
    assert "validation" in no_validation.reason


# --- training --------------------------------------------------------------------------------
def test_a_seeded_segmentation_is_deterministic_and_finds_the_lesions(segmentation_pair) -> None:
    first, second = segmentation_pair
    weights = [torch.load(r.model_dir / "network_state.pt", weights_only=True) for r in segmentation_pair]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    assert first.test_metrics == second.test_metrics
    # chance (a mask of random pixels) would give a Dice of ~2 * lesion share ~ 0.03
    assert first.test_metrics["test_dice"] > 0.4 and first.test_metrics["test_n_lesion_images"] == 6
    assert len(first.history) == first.epochs_run and {"train_loss", "val_loss", "val_dice", "lr"} <= set(first.history[0])


def test_a_seeded_classifier_beats_chance(classifier) -> None:
    assert classifier.test_metrics["test_roc_auc"] > 0.8
    assert {"val_roc_auc", "val_accuracy"} <= set(classifier.history[-1])


def test_the_saved_model_folder_predicts_as_training_scored(segmentation_pair, slices) -> None:
    frame, folder = slices
    result = segmentation_pair[0]
    predictor = ImagingPredictor.load(result.model_dir.parent)  # the training's output folder finds model/
    test_rows = frame[frame["split"] == "test"].sort_values("image_id")
    raw = [np.load(folder / name) for name in test_rows["pixel_file"]]
    masks = predictor.predict_masks(raw)
    assert [m.shape for m in masks] == [(64, 64)] * len(raw)
    assert predictor.score(split_images(frame, folder)["test"]) == pytest.approx(
        {k.removeprefix("test_"): v for k, v in result.test_metrics.items()}, nan_ok=True)
    # the pyfunc's answer is the predictor's, for a stack of raw slices of any size
    assert np.array_equal(predictions(predictor, np.stack(raw).astype(np.float32)), np.stack(masks).astype(np.uint8))
    larger = np.pad(raw[0], 16, mode="edge").astype(np.float32)
    assert predictions(predictor, larger[None]).shape == (1, 96, 96)


def test_a_tampered_model_folder_is_refused(classifier, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(classifier.model_dir, copy)
    state = torch.load(copy / "network_state.pt", weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, copy / "network_state.pt")
    with pytest.raises(ValueError, match="SHA-256"):
        ImagingPredictor.load(copy)
    assert (classifier.model_dir / MODEL_SPEC_FILENAME).is_file()


def test_the_intensity_threshold_baseline_is_fitted_on_train_and_scored_on_test(slices) -> None:
    images = split_images(*slices)
    segmentation = segmentation_baseline(images["train"], images["test"])
    assert 0.5 <= segmentation.threshold <= 6.0 and 0.0 < segmentation.metrics["baseline_test_dice"] <= 1.0
    classification = classification_baseline(images["train"], images["test"])
    assert classification.metrics["majority_class_test_accuracy"] == 0.5
    assert classification.metrics["baseline_test_roc_auc"] > 0.5  # bright blobs: the obvious rule is not chance


# --- MLflow ----------------------------------------------------------------------------------
@pytest.fixture()
def experiment_id(tmp_path: Path) -> Iterator[str]:
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        yield mlflow.create_experiment("imaging", artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


def test_a_training_that_cannot_fit_ends_its_run_failed_and_registers_nothing(tmp_path, experiment_id) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from medllm_pipelines.lib.curate.dataset import SplitDataset
    from medllm_pipelines.lib.train.imaging.runs import train_imaging_spec_model
    from medllm_pipelines.lib.train.registry import list_registered
    from medllm_pipelines.lib.train.tracking import FAILURE_REASON_TAG

    frame = synthetic_lesion_frame(tmp_path, lesions=False)
    with pytest.raises(ValueError, match="spec lesion_segmentation: the training split holds no lesion"):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            train_imaging_spec_model(SplitDataset(frame, "d" * 64), tmp_path, load_spec("lesion_segmentation"),
                                     tmp_path / "out", run.info.run_id)
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FAILED" and "no lesion" in finished.data.tags[FAILURE_REASON_TAG]
    assert list_registered() == []
