"""The imaging evaluation adapter (issue 12): a tiny lesion classifier and a tiny UNet, trained on synthetic slices,
scored on every split by their predictor, beside the intensity-threshold baseline, with the robustness and
explanation sections, the gate's attack value, and bad requests refused with a clear error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medllm_pipelines.lib.curate.dataset import SplitDataset, join_features_with_splits
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest, adapter_for
from medllm_pipelines.lib.evaluate.adapters import imaging as adapter
from medllm_pipelines.lib.evaluate.gate import gate_policy
from medllm_pipelines.lib.evaluate.membership import binary_log_losses
from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none
from medllm_pipelines.lib.train.imaging.baselines import classification_baseline
from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor
from medllm_pipelines.lib.train.imaging.training import (
    CLASSIFICATION,
    SEGMENTATION,
    ImagingConfig,
    split_images,
    train_imaging_model,
)
from medllm_pipelines.lib.train.store import ModelStore
from medllm_pipelines_tests.lib.train.test_imaging import (
    TINY_DENSENET,
    TINY_TRAINING,
    TINY_UNET,
    synthetic_lesion_frame,
)

PNG = b"\x89PNG\r\n\x1a\n"
EPSILON = 0.02


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[SplitDataset, Path, pd.DataFrame]:
    """64 synthetic slices (40/12/12, half with a lesion), the dataset as the training asset joins it, patients."""
    folder = tmp_path_factory.mktemp("eval_slices")
    rows = synthetic_lesion_frame(folder, seed=2)
    splits = rows[["image_id", "patient_pseudonym", "split"]]
    dataset = adapter.dataset(load_spec("lesion_classifier"), {"dataset": rows.drop(columns="split"), "splits": splits})
    people = rows[["patient_pseudonym"]].assign(sex=np.where(rows.index % 2 == 0, "female", "male"),
                                                age_band="55-59", institution="H1")
    return dataset, folder, people


def _train(slices, task: str, network: dict, output_dir: Path, **overrides):
    dataset, folder, _ = slices
    torch.set_num_threads(1)
    config = ImagingConfig.from_spec("tiny", task, network, {**TINY_TRAINING[task], **overrides})
    return train_imaging_model(dataset.frame, folder, config, output_dir, spec_id="tiny",
                               dataset_version=dataset.version)


@pytest.fixture(scope="module")
def classifier_dir(slices, tmp_path_factory) -> Path:
    return _train(slices, CLASSIFICATION, TINY_DENSENET, tmp_path_factory.mktemp("cls")).model_dir


@pytest.fixture(scope="module")
def segmentation_dir(slices, tmp_path_factory) -> Path:
    return _train(slices, SEGMENTATION, TINY_UNET, tmp_path_factory.mktemp("seg"), max_epochs=6).model_dir


def _request(spec_id: str, slices, model_dir: Path, tmp_path: Path, *, dataset: SplitDataset | None = None,
             record: dict | None = None, folders: dict | None = None, policy: object = "spec") -> EvaluationRequest:
    full, folder, people = slices
    spec = load_spec(spec_id)
    return EvaluationRequest(
        spec=spec, policy=gate_policy(spec_id, spec.evaluation) if policy == "spec" else policy,
        record=record if record is not None else {"model_dir": str(model_dir), "registered_model": spec_id,
                                                  "registered_version": "7", "dataset_version": full.version},
        dataset=dataset or full, tables={"patients": people}, store=ModelStore(tmp_path),
        folders=folders if folders is not None else {"images": folder}, size="demo", seed=0)


@pytest.fixture(scope="module")
def classifier_outputs(slices, classifier_dir, tmp_path_factory):
    return adapter.outputs(_request("lesion_classifier", slices, classifier_dir, tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def segmentation_outputs(slices, segmentation_dir, tmp_path_factory):
    return adapter.outputs(_request("lesion_segmentation", slices, segmentation_dir, tmp_path_factory.mktemp("store")))


def _raw(dataset: SplitDataset, folder: Path, split: str) -> list[np.ndarray]:
    """The de-identified pixel arrays of one split, in the dataset's row order, as the predictor is served them."""
    return [np.load(folder / name) for name in dataset.split(split)["pixel_file"]]


def _section(outputs, key: str):
    return {section.key: section for section in outputs.sections}[key]


# --- dataset ------------------------------------------------------------------------------------------------------
def test_the_dataset_is_joined_by_image_as_the_training_asset_joins_it(slices) -> None:
    dataset, _, _ = slices
    rows = dataset.frame.drop(columns="split")
    splits = dataset.frame[["image_id", "patient_pseudonym", "split"]]
    trained_on = join_features_with_splits(rows, splits, id_column="image_id")
    rebuilt = adapter.dataset(load_spec("lesion_segmentation"), {"dataset": rows, "splits": splits})
    assert rebuilt.version == trained_on.version
    assert adapter_for("lesion_classifier").module == adapter_for("lesion_segmentation").module == "imaging"
    with pytest.raises(KeyError, match="lesion_classifier.*splits"):
        adapter.dataset(load_spec("lesion_classifier"), {"dataset": rows})


# --- lesion classifier --------------------------------------------------------------------------------------------
def test_the_classifier_scores_every_slice_with_its_predictor_and_the_baseline(slices, classifier_dir,
                                                                             classifier_outputs) -> None:
    dataset, folder, _ = slices
    out = classifier_outputs
    assert out.task == "binary" and (out.model_name, out.model_version) == ("lesion_classifier", "7")
    assert list(out.frame["example_id"]) == list(dataset.frame["image_id"])
    assert out.frame["split"].value_counts().to_dict() == {"train": 40, "validation": 12, "test": 12}
    assert set(out.frame["sex"]) == {"female", "male"} and set(out.frame["age_band"]) == {"40-64"}
    test = out.rows("test")
    images = split_images(dataset.frame, folder)["test"]
    served = ImagingPredictor.load(classifier_dir)
    assert np.allclose(out.model[test], served.predict_proba(_raw(dataset, folder, "test")), atol=1e-6)
    assert np.array_equal(out.y_true[test], images.presence)
    assert np.allclose(out.frame["loss"], binary_log_losses(out.y_true, out.model))
    assert roc_auc_or_none(out.y_true[test], out.model[test]) > 0.7  # the tiny CNN learnt the lesions
    # the baseline on every row, and on test it is the rule the training run logged
    assert np.isfinite(out.baseline).all() and ((0 <= out.baseline) & (out.baseline <= 1)).all()
    logged = classification_baseline(split_images(dataset.frame, folder)["train"], images).metrics
    assert roc_auc_or_none(out.y_true[test], out.baseline[test]) == pytest.approx(logged["baseline_test_roc_auc"])
    assert "fitted on train" in out.baseline_name and out.limits and out.threshold_note


def test_the_classifier_robustness_section_has_both_attack_curves_the_defence_and_the_gate_value(
        classifier_outputs) -> None:
    section = _section(classifier_outputs, "robustness")
    summary = section.summary
    assert section.clause.startswith("5.4.3") and summary["attacked_slices"] == 12
    pgd, fgsm = summary["pgd_accuracy"], summary["fgsm_accuracy"]
    assert set(pgd) == set(fgsm) == {"0", "0.01", "0.02", "0.05", "0.1"}  # robustness.yaml's epsilons, gate eps in it
    assert pgd["0"] == fgsm["0"] == summary["clean_accuracy"] > 0.5
    assert all(0.0 <= v <= 1.0 for v in (*pgd.values(), *fgsm.values()))
    assert pgd["0.1"] <= pgd["0"] and pgd["0.1"] <= fgsm["0.1"] + 1e-9  # PGD at least as strong as one FGSM step
    assert classifier_outputs.gate_values["attack_accuracy"] == summary["pgd_accuracy_at_gate_epsilon"] == pgd["0.02"]
    squeezing = summary["feature_squeezing"]
    assert squeezing["eps"] == EPSILON and squeezing["after"] >= squeezing["before"]  # detected or correct >= correct
    assert {p["perturbation"] for p in summary["perturbations"]} == {"image_noise", "contrast_gamma"}
    assert [t.title for t in section.tables][0].startswith("Accuracy under white-box attack")
    assert section.figures and section.figures[0].png.startswith(PNG)


def test_the_explanations_section_measures_grad_cam_against_the_lesion_masks(classifier_outputs) -> None:
    section = _section(classifier_outputs, "explanations")
    summary = section.summary
    assert summary["target_layer"] == "class_layers.relu" and summary["explained_slices"] == 6  # the lesion test slices
    assert 0.0 < summary["energy_inside_mask_chance"] < 0.1
    assert 0.0 <= summary["energy_inside_mask_mean"] <= 1.0 and 0.0 <= summary["pointing_game_hit_rate"] <= 1.0
    # deleting the lesion's pixels first is a reference; the faithfulness score compares Grad-CAM with random order
    assert summary["deletion_faithfulness"] == pytest.approx(summary["deletion_auc_random"]
                                                             - summary["deletion_auc_gradcam"])
    assert 0.0 <= summary["blank_slice_p"] <= 1.0
    # the CNN uses the lesion: its pixels set to the slice mean lower P(lesion)
    assert summary["lesion_occlusion_mean_p_occluded"] < summary["lesion_occlusion_mean_p_clean"]
    assert len(section.figures) == 2 and all(f.png.startswith(PNG) for f in section.figures)
    assert "image_id" not in str(section.as_dict()) and "img-" not in str(section.as_dict())  # no identifiers


# --- Grad-CAM, deletion curves ------------------------------------------------------------------------------------
class _BrightnessNet(nn.Module):
    """logit = mean of relu(x): Grad-CAM at ``relu`` is the input's bright pixels, nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x)).mean(dim=(2, 3))


def test_grad_cam_peaks_where_the_evidence_is_not_flipped_by_monais_default_normaliser() -> None:
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 3:6, 10:13] = 1.0
    maps, cells = adapter.gradcam_maps(_BrightnessNet(), image, "relu")
    assert cells == (16, 16) and maps.shape == (1, 16, 16) and maps.max() == pytest.approx(1.0)
    assert maps[0, 4, 11] == pytest.approx(1.0) and maps[0, 12, 2] == pytest.approx(0.0)
    mask = image[0, 0].numpy().astype(bool)
    assert adapter.energy_inside_mask(maps[0], mask) == pytest.approx(1.0)
    assert adapter.energy_inside_mask(np.zeros((16, 16)), mask) is None  # a blank map: undefined, not 0


def test_grad_cam_reads_the_last_feature_map_of_each_family() -> None:
    from medllm_pipelines.lib.train.imaging.networks import (
        CLASSIFICATION_FAMILIES,
        build_classification_network,
        network_description,
    )

    for family, layer in (("densenet", "class_layers.relu"), ("resnet", "layer4")):
        network = build_classification_network(network_description({"family": family}, CLASSIFICATION_FAMILIES))
        assert adapter.gradcam_layer(network, family) == layer
    assert adapter.gradcam_layer(_BrightnessNet(), "other") == "conv"
    with pytest.raises(ValueError, match="no Conv2d"):
        adapter.gradcam_layer(nn.Sequential(nn.Linear(2, 1)), "mlp")


def test_a_deletion_curve_falls_when_the_evidence_goes_first() -> None:
    image = np.zeros((1, 8, 8), dtype=np.float32)
    image[0, :2, :2] = 1.0

    def score(batch: torch.Tensor) -> np.ndarray:
        return batch[:, 0, :2, :2].mean(dim=(1, 2)).numpy()

    evidence_first = np.argsort(-image.reshape(-1), kind="stable")
    curve = adapter.deletion_curve(score, image, evidence_first, steps=4, max_share=0.125)
    assert curve.tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]  # 2 of 64 pixels per step: the evidence is gone by step 2
    last_first = adapter.deletion_curve(score, image, evidence_first[::-1], steps=4, max_share=0.125)
    assert last_first.tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="max_share"):
        adapter.deletion_curve(score, image, evidence_first, steps=4, max_share=0.0)


# --- lesion segmentation ------------------------------------------------------------------------------------------
def test_the_segmentation_is_scored_per_slice_with_the_predictors_masks(slices, segmentation_dir,
                                                                      segmentation_outputs) -> None:
    dataset, folder, _ = slices
    out = segmentation_outputs
    assert out.task == "segmentation" and out.model.shape == out.baseline.shape == (64, 3)
    test = out.rows("test")
    images = split_images(dataset.frame, folder)["test"]
    served = ImagingPredictor.load(segmentation_dir)
    masks = served.predict_masks(_raw(dataset, folder, "test"))  # one slice at a time, as served
    expected = adapter.case_metrics(masks, [mask[0] for mask in images.masks])
    assert np.allclose(out.model[test], expected, equal_nan=True)
    lesion = dataset.frame["lesion"].to_numpy(dtype=bool)
    assert np.isnan(out.model[~lesion, 0]).all() and np.isfinite(out.model[lesion, 0]).all()  # Dice undefined: NaN
    assert np.nanmean(out.model[test, 0]) == pytest.approx(served.score(images)["dice"])  # training's test Dice
    assert np.isfinite(out.frame["loss"]).all() and (out.frame["loss"] > 0).all()
    assert "fitted on train" in out.baseline_name


def test_the_segmentation_robustness_is_dice_under_pgd_through_the_sliding_window(segmentation_outputs) -> None:
    section = _section(segmentation_outputs, "robustness")
    summary = section.summary
    dice = summary["pgd_dice"]
    assert summary["attacked_slices"] == 6 and set(dice) == {"0", "0.01", "0.02", "0.05", "0.1"}
    assert all(0.0 <= v <= 1.0 for v in dice.values())
    assert dice["0.1"] < dice["0"]  # the attack works
    assert segmentation_outputs.gate_values["attack_accuracy"] == summary["pgd_dice_at_gate_epsilon"] == dice["0.02"]
    assert "Dice" in section.text and "accuracy under attack" in section.text
    assert {p["metric"] for p in summary["perturbations"]} == {"dice"}
    assert section.figures[0].png.startswith(PNG)


def test_without_lesion_test_slices_the_attack_is_undefined_and_no_policy_means_no_gate_value(
        slices, segmentation_dir, tmp_path) -> None:
    dataset, _, _ = slices
    frame = dataset.frame
    keep = ~((frame["split"] == "test") & frame["lesion"].astype(bool))
    lesion_free = SplitDataset(frame[keep].reset_index(drop=True), "lesion-free")
    request = _request("lesion_segmentation", slices, segmentation_dir, tmp_path, dataset=lesion_free,
                       record={"model_dir": str(segmentation_dir)}, policy=None)
    out = adapter.outputs(request)
    section = _section(out, "robustness")
    assert out.gate_values == {"attack_accuracy": None}  # undefined, never a 0 that looks like a result
    assert "no slice with a lesion" in section.summary["undefined"]
    assert np.isnan(out.model[out.rows("test"), 0]).all()
    assert out.model_version == "unregistered"


@pytest.mark.parametrize(("change", "message"), [
    ({"record": {}}, "names no model_dir"),
    ({"folders": {}}, r"folders\['images'\]"),
    ({"record": {"model_dir": "MODEL", "dataset_version": "0" * 64}}, "trained on dataset version 0000"),
])
def test_a_request_the_adapter_cannot_serve_is_refused_clearly(slices, classifier_dir, tmp_path, change,
                                                               message) -> None:
    if "record" in change and change["record"].get("model_dir") == "MODEL":
        change = {"record": {**change["record"], "model_dir": str(classifier_dir)}}
    with pytest.raises(ValueError, match=message):
        adapter.outputs(_request("lesion_classifier", slices, classifier_dir, tmp_path, **change))


def test_a_segmentation_model_is_not_evaluated_as_the_classifier(slices, segmentation_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="lesion_classifier is a classification spec"):
        adapter.outputs(_request("lesion_classifier", slices, segmentation_dir, tmp_path))


def test_the_imaging_specs_declare_their_gate() -> None:
    for spec_id, primary, ece in (("lesion_classifier", "roc_auc", 0.10), ("lesion_segmentation", "dice", None)):
        policy = gate_policy(spec_id, load_spec(spec_id).evaluation)
        assert policy.primary_metric == primary and policy.ece_max == ece
        assert policy.mia_auc_max == 0.60 and policy.attack_epsilon == EPSILON  # issue 12's membership target
        assert dataclasses.asdict(policy)["attack_accuracy_min"] is not None
