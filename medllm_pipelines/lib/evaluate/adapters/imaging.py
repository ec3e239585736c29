"""Evaluation adapter of the imaging family (issue 12): the lesion classifier (DenseNet/ResNet) and the lesion
segmentation model (UNet/SegResNet) on their de-identified CT/MR slices.

What it hands the engine (``outputs.ModelOutputs``), one row per slice of train, validation and test:

- lesion_classifier, task ``binary``: P(lesion) per slice from the family's predictor
  (``ImagingPredictor.predict_proba``, the serving path), the per-slice log loss for membership inference, and the
  spec's ``intensity_threshold`` baseline (the brightest z-score against the cut-off fitted on the training split).
  Sections: ``robustness`` (clause 5.4.3, row S8: FGSM and PGD accuracy against epsilon, feature squeezing before
  and after, image noise and contrast changes) and ``explanations`` (row V7: MONAI Grad-CAM overlays, the share of
  Grad-CAM energy inside the true lesion mask, the pointing game, and a deletion-curve faithfulness score).
- lesion_segmentation, task ``segmentation``: Dice, IoU and HD95 per slice (``task_metrics.segmentation_case_metrics``,
  NaN where undefined) of the predictor's sliding-window masks (``ImagingPredictor.predict_masks``), the baseline's
  thresholded masks scored the same way, and the per-slice DiceCE loss (the training objective) for membership
  inference. Section ``robustness``: PGD on the soft-Dice loss through the same sliding-window inference, Dice
  against epsilon, and the image perturbation suite.

The gate value ``attack_accuracy`` is the PGD accuracy (classifier) or the mean Dice under PGD (segmentation) at the
epsilon the spec's ``evaluation.attack`` declares. Costly analyses run on a seeded subsample of the test split
(``IMAGING_BUDGETS``), and each section says how many slices it used. Epsilons are in the units the networks see:
per-slice z-scored intensities (``images.normalise_slice``).
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medllm_pipelines.lib.curate.dataset import SplitDataset, join_features_with_splits
from medllm_pipelines.lib.curate.spec import ModelSpec
from medllm_pipelines.lib.evaluate import robustness as R
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest
from medllm_pipelines.lib.evaluate.membership import binary_log_losses
from medllm_pipelines.lib.evaluate.outputs import Figure, ModelOutputs, ReportSection, Table, jsonable, person_groups
from medllm_pipelines.lib.evaluate.task_metrics import segmentation_case_metrics
from medllm_pipelines.lib.train.imaging.baselines import (
    classification_baseline,
    classification_baseline_probabilities,
    segmentation_baseline,
    segmentation_baseline_masks,
)
from medllm_pipelines.lib.train.imaging.images import LesionImages, as_slice, load_lesion_images
from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor
from medllm_pipelines.lib.train.imaging.runs import imaging_task
from medllm_pipelines.lib.train.imaging.training import CLASSIFICATION, SEGMENTATION

ID_COLUMN = "image_id"
IMAGES_FOLDER_KEY = "images"
ROBUSTNESS_CLAUSE = "5.4.3 adversarial robustness (S8)"
EXPLANATIONS_CLAUSE = "5.3.3 transparent, traceable evaluation report: explanations (V7)"
# Grad-CAM target per network family: the last spatial feature map before global pooling (MONAI's own examples
# use "class_layers.relu" for DenseNet); other networks fall back to their last Conv2d.
GRADCAM_LAYERS = {"densenet": "class_layers.relu", "resnet": "layer4"}


@dataclass(frozen=True)
class ImagingBudget:
    """How many test slices the costly analyses use (seeded subsamples), per training size."""

    attack_slices: int  # classifier: FGSM/PGD curves, feature squeezing, perturbation suite
    segmentation_attack_slices: int  # lesion slices attacked through the sliding-window inference (the costly one)
    explained_slices: int  # Grad-CAM energy inside the mask and pointing game (lesion slices)
    deletion_slices: int  # deletion curves (each: 2 + random_orders orders x deletion_steps + 1 forward passes)
    figure_slices: int = 4
    deletion_steps: int = 20
    random_orders: int = 3
    # Pixels deleted up to this share: a quarter of the slice is 4 of Grad-CAM's 16 cells on 64-pixel slices, and
    # beyond it the curve measures how the network scores a mostly blank slice, not the map.
    deletion_max_share: float = 0.25


# demo: ~20 s per spec on 2 shared cores at the demo hospital (39 test slices, 20 with a lesion)
IMAGING_BUDGETS = {"demo": ImagingBudget(attack_slices=48, segmentation_attack_slices=12, explained_slices=32,
                                         deletion_slices=12),
                   "full": ImagingBudget(attack_slices=256, segmentation_attack_slices=64, explained_slices=128,
                                         deletion_slices=48)}
# Windows per network call when the evaluation runs the sliding-window inference: the same windows and blending
# as the predictor's (model_spec.json sw_batch_size only groups them), in fewer calls.
EVALUATION_SW_BATCH_SIZE = 64


# ----------------------------------------------------------------------------- dataset


def dataset(spec: ModelSpec, tables: Mapping[str, pd.DataFrame]) -> SplitDataset:
    """The lesion image rows joined with their splits by ``image_id``, exactly as train/lesion_* built them
    (defs/train/imaging.py), so that the version is the one the model was trained on."""
    missing = [name for name in ("dataset", "splits") if name not in tables]
    if missing:
        raise KeyError(f"spec {spec.id}: the imaging evaluation needs the tables {missing}")
    return join_features_with_splits(tables["dataset"], tables["splits"], id_column=ID_COLUMN)


# ----------------------------------------------------------------------------- shared helpers


@dataclass(frozen=True)
class _Slices:
    """Every row of the dataset, in its order: raw de-identified pixels, normalised slices and masks."""

    rows: pd.DataFrame
    raw: tuple[np.ndarray, ...]
    images: LesionImages

    def split_mask(self, split: str) -> np.ndarray:
        return (self.rows["split"].astype(str) == split).to_numpy()

    def subset(self, mask: np.ndarray) -> LesionImages:
        index = np.flatnonzero(mask)
        i = self.images
        return LesionImages(tuple(i.image_ids[k] for k in index), tuple(i.images[k] for k in index),
                            tuple(i.masks[k] for k in index), i.presence[index])


def _load_slices(frame: pd.DataFrame, images_folder: Path) -> _Slices:
    """Pixels of every row (``pixel_file`` under the folder of de-identified arrays) with their masks decoded."""
    rows = frame.reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError("the dataset holds no image rows to evaluate")
    raw = tuple(as_slice(np.load(Path(images_folder) / str(name), allow_pickle=False)) for name in rows["pixel_file"])
    return _Slices(rows, raw, load_lesion_images(rows, Path(images_folder)))


def _frame(slices: _Slices, losses: np.ndarray, patients: pd.DataFrame | None) -> pd.DataFrame:
    rows = slices.rows
    frame = pd.DataFrame({"example_id": rows[ID_COLUMN].astype(str).to_numpy(),
                          "split": rows["split"].astype(str).to_numpy(),
                          "patient_pseudonym": rows["patient_pseudonym"].astype(str).to_numpy(),
                          "loss": np.asarray(losses, dtype=np.float64)})
    groups = person_groups(frame["patient_pseudonym"], patients)
    return pd.concat([frame, groups.reset_index(drop=True)], axis=1)


def _seeded_subset(candidates: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``candidates`` (row indices), drawn without replacement with ``seed``, in row order."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) <= limit:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, size=limit, replace=False))


def _one_shape(slices: _Slices, index: np.ndarray) -> tuple[np.ndarray, int]:
    """The rows of ``index`` whose slices share the most common shape (attacks stack them), and how many were
    left out."""
    if len(index) == 0:
        return index, 0
    shapes = [slices.images.images[i].shape for i in index]
    values, counts = np.unique(np.array([str(s) for s in shapes]), return_counts=True)
    common = values[int(np.argmax(counts))]
    kept = np.array([i for i, s in zip(index, shapes) if str(s) == common], dtype=np.int64)
    return kept, len(index) - len(kept)


def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.float32))


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


def _attack_epsilons(config: R.RobustnessConfig, key: str, gate_epsilon: float | None) -> list[float]:
    epsilons = {float(e) for e in config.attacks.get(key) or []}
    if gate_epsilon is not None and gate_epsilon > 0:
        epsilons.add(float(gate_epsilon))
    return sorted(epsilons)


def _pgd_options(config: R.RobustnessConfig, seed: int) -> dict[str, Any]:
    pgd = config.attacks.get("pgd") or {}
    return {"steps": int(pgd.get("steps", 20)), "relative_step_size": float(pgd.get("relative_step_size", 2.5)),
            "random_start": bool(pgd.get("random_start", True)), "seed": int(seed)}


def _gate_value(curve: R.RobustnessCurve, epsilon: float | None) -> float | None:
    if epsilon is None:
        return None
    if epsilon == 0:
        return curve.clean
    return curve.value_at(epsilon)


def _curve_figure(curves: Sequence[R.RobustnessCurve], ylabel: str, title: str, gate_epsilon: float | None,
                  limit: float | None) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(5.0, 3.4))
    axes = figure.add_subplot(1, 1, 1)
    for curve in curves:
        points = [(e, v) for e, v in curve.points if v is not None]
        axes.plot([e for e, _ in points], [v for _, v in points], marker="o", label=curve.attack.upper())
    if gate_epsilon is not None:
        axes.axvline(gate_epsilon, color="grey", linestyle=":", label=f"gate eps {gate_epsilon:g}")
    if limit is not None:
        axes.axhline(limit, color="red", linestyle="--", linewidth=0.8, label=f"gate minimum {limit:g}")
    axes.set_xlabel("epsilon (L-inf, z-scored intensity units)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return _png(figure)


def _perturbation_table(results: Sequence[R.PerturbationResult]) -> Table:
    rows = []
    for result in results:
        setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.details.items())
        rows.append((result.perturbation, setting, _round(result.clean), _round(result.perturbed),
                     _round(result.change)))
    metric = results[0].metric if results else "metric"
    return Table(f"Clinical image perturbations ({metric})", ("perturbation", "setting", f"clean {metric}",
                                                              f"perturbed {metric}", "change"), tuple(rows))


def _model_identity(request: EvaluationRequest) -> tuple[str, str]:
    record = request.record
    return (str(record.get("registered_model") or request.spec.id),
            str(record.get("registered_version") or "unregistered"))


def _load_predictor(request: EvaluationRequest) -> tuple[ImagingPredictor, str, Path]:
    """The model the training record names, checked against the spec's task and the dataset version."""
    spec, record = request.spec, request.record
    task = imaging_task(spec)
    model_dir = record.get("model_dir")
    if not model_dir:
        raise ValueError(f"spec {spec.id}: the training record names no model_dir; nothing to evaluate")
    images_folder = request.folders.get(IMAGES_FOLDER_KEY)
    if images_folder is None:
        raise ValueError(f"spec {spec.id}: the imaging evaluation needs folders['images'] (deidentified/images)")
    recorded = record.get("dataset_version")
    if recorded and recorded != request.dataset.version:
        raise ValueError(f"spec {spec.id}: the model was trained on dataset version {str(recorded)[:16]}, "
                         f"not on the evaluated {request.dataset.version[:16]}")
    predictor = ImagingPredictor.load(model_dir)
    if predictor.task != task:
        raise ValueError(f"spec {spec.id} is a {task} spec but {model_dir} holds a {predictor.task} model")
    return predictor, task, Path(images_folder)


def outputs(request: EvaluationRequest) -> ModelOutputs:
    """Every slice of train, validation and test scored by the model and the baseline, with the family's sections."""
    predictor, task, images_folder = _load_predictor(request)
    slices = _load_slices(request.dataset.frame, images_folder)
    budget = IMAGING_BUDGETS.get(request.size, IMAGING_BUDGETS["demo"])
    if task == CLASSIFICATION:
        return _classifier_outputs(request, predictor, slices, budget)
    if task == SEGMENTATION:
        return _segmentation_outputs(request, predictor, slices, budget)
    raise AssertionError("unreachable")  # imaging_task refuses other tasks


# ----------------------------------------------------------------------------- lesion classifier


def _classifier_outputs(request: EvaluationRequest, predictor: ImagingPredictor, slices: _Slices,
                        budget: ImagingBudget) -> ModelOutputs:
    presence = slices.images.presence.astype(np.int64)
    probabilities = predictor.predict_proba(list(slices.raw))
    losses = binary_log_losses(presence, probabilities)
    train = slices.subset(slices.split_mask("train"))
    fitted = classification_baseline(train, slices.subset(slices.split_mask("test")))
    baseline = classification_baseline_probabilities(slices.images, fitted.threshold)
    test = np.flatnonzero(slices.split_mask("test"))
    network = predictor.network.eval()
    robustness_section, gate_values, robustness_limits = _classifier_robustness(
        request, network, predictor.threshold, slices, test, budget)
    explanations_section, explanation_limits = _classifier_explanations(
        request, predictor, slices, test, probabilities, budget)
    model_name, model_version = _model_identity(request)
    limits = (
        f"{len(test)} test slices ({int(presence[test].sum())} with a lesion): intervals are wide and a single slice "
        f"moves accuracy by {100.0 / max(len(test), 1):.1f} points.",
        "The intensity-threshold baseline's cut-off is fitted on the training split: its train-row scores are "
        "in-sample; compare it on validation and test.",
        "Membership inference reads the log loss of the un-augmented slice; the model was trained on flipped, "
        "rotated and noised copies, so an attacker who knows the augmentation could do better than this AUC shows.",
        *robustness_limits,
        *explanation_limits,
        "The slices are the synthetic hospital's: lesions are bright round blobs; real lesions vary in shape, "
        "contrast and context, so none of these figures transfers to clinical images without a real-data study.",
    )
    return ModelOutputs(
        task="binary", frame=_frame(slices, losses, request.tables.get("patients")), y_true=presence,
        model=np.asarray(probabilities, dtype=np.float64), model_name=model_name, model_version=model_version,
        baseline=baseline,
        baseline_name=f"intensity_threshold (brightest z-score > {fitted.threshold:g}, fitted on train)",
        sections=(robustness_section, explanations_section), gate_values=gate_values, limits=limits,
        threshold_note=(f"The network's decision threshold is {predictor.threshold:g} as trained (model_spec.json); "
                        "the attacks, the defence and the perturbation suite score accuracy at it."),
    )


def _classifier_robustness(request: EvaluationRequest, network: nn.Module, threshold: float, slices: _Slices,
                           test: np.ndarray, budget: ImagingBudget
                           ) -> tuple[ReportSection, dict[str, float | None], tuple[str, ...]]:
    """FGSM and PGD curves, feature squeezing before/after at the gate epsilon, and the perturbation suite."""
    config = R.load_robustness_config()
    policy = request.policy
    gate_epsilon = policy.attack_epsilon if policy is not None else None
    gate_minimum = policy.attack_accuracy_min if policy is not None else None
    sample, other_shape = _one_shape(slices, _seeded_subset(test, budget.attack_slices, request.seed))
    if len(sample) == 0:
        reason = "the test split holds no slice to attack"
        return (ReportSection("robustness", "Robustness under attack and perturbation", ROBUSTNESS_CLAUSE,
                              {"undefined": reason, "attacked_slices": 0}, text=reason),
                {"attack_accuracy": None}, (f"Robustness undefined: {reason}.",))
    inputs = _stack([slices.images.images[i] for i in sample])
    labels = torch.from_numpy(slices.images.presence[sample].astype(np.int64))
    epsilons = _attack_epsilons(config, "imaging_epsilons", gate_epsilon)
    options = _pgd_options(config, request.seed)
    fgsm_curve = R.attack_curve(network, inputs, labels, epsilons, attack="fgsm", threshold=threshold)
    pgd_curve = R.attack_curve(network, inputs, labels, epsilons, attack="pgd", threshold=threshold, **options)
    defence_epsilon = gate_epsilon if gate_epsilon else max(epsilons)
    adversarial = R.pgd(network, inputs, labels, defence_epsilon, **options)
    squeezing = config.defences.get("feature_squeezing") or {}
    defence = R.feature_squeezing_defence(
        network, inputs, adversarial, labels, bits=int(squeezing.get("bit_depth", 4)),
        median_size=int(squeezing.get("median_size", 2)),
        false_positive_rate=float(squeezing.get("false_positive_rate", 0.05)), attack="pgd", eps=defence_epsilon,
        threshold=threshold)
    perturbations = R.image_perturbation_suite(
        lambda images: R.classification_accuracy(network, images, labels, threshold), inputs, config=config,
        seed=request.seed)
    attack_accuracy = _gate_value(pgd_curve, gate_epsilon)
    n_lesion = int(labels.sum())
    summary = {
        "attacked_slices": len(sample), "attacked_lesion_slices": n_lesion, "split": "test",
        "sampling": f"seeded (seed {request.seed}) subsample of at most {budget.attack_slices} test slices",
        "slices_left_out_other_shape": other_shape,
        "epsilon_units": "L-inf radius in per-slice z-scored intensity units (what the network sees)",
        "pgd": {"steps": options["steps"], "relative_step_size": options["relative_step_size"],
                "random_start": options["random_start"]},
        "clean_accuracy": pgd_curve.clean,
        "fgsm_accuracy": {f"{e:g}": v for e, v in fgsm_curve.points},
        "pgd_accuracy": {f"{e:g}": v for e, v in pgd_curve.points},
        "gate_epsilon": gate_epsilon,
        "pgd_accuracy_at_gate_epsilon": attack_accuracy,
        "feature_squeezing": defence.as_metadata(),
        "perturbations": [p.as_metadata() for p in perturbations],
        "robustness_config_version": config.version,
    }
    curve_table = Table("Accuracy under white-box attack (test slices)", ("epsilon", "FGSM accuracy", "PGD accuracy"),
                        tuple((e, _round(f), _round(p)) for (e, f), (_, p) in zip(fgsm_curve.points, pgd_curve.points)))
    details = defence.details
    defence_table = Table(
        "Feature squeezing (Xu et al. 2018) against PGD",
        ("attack", "epsilon", "accuracy without defence", "handled with defence (detected or correct)",
         "detection rate", "clean false-positive rate", "median-squeezed accuracy"),
        (("pgd", defence_epsilon, _round(defence.before), _round(defence.after), _round(details["detection_rate"]),
          _round(details["clean_false_positive_rate"]), _round(details["squeezed_accuracy"])),))
    figure = Figure("Accuracy against epsilon (FGSM, PGD)",
                    _curve_figure((fgsm_curve, pgd_curve), "accuracy", f"lesion classifier, {len(sample)} test slices",
                                  gate_epsilon, gate_minimum),
                    caption="Eps 0 is the clean accuracy; each point attacks every sampled slice white-box.")
    text = (f"White-box L-inf attacks on the classifier's logit, on {len(sample)} test slices ({n_lesion} with a "
            "lesion): "
            f"FGSM (Goodfellow et al. 2015) and PGD with {options['steps']} steps and a random start (Madry et al. "
            "2018). Epsilon is in z-scored intensity units: the networks see each slice normalised to mean 0 and "
            "standard deviation 1. Feature squeezing (4-bit depth and a 2x2 median filter) flags an input whose "
            "prediction moves when squeezed; 'handled' counts an adversarial slice as flagged for a human or "
            "still classified correctly. The perturbation suite adds Gaussian noise and gamma (contrast) changes "
            "and re-normalises each slice as the predictor does. "
            + (f"The gate reads the PGD accuracy at eps {gate_epsilon:g}." if gate_epsilon is not None
               else "The spec declares no attack: no gate value."))
    section = ReportSection("robustness", "Robustness under attack and perturbation", ROBUSTNESS_CLAUSE,
                            jsonable(summary), (curve_table, defence_table, _perturbation_table(perturbations)),
                            (figure,), text)
    limits = (
        f"Attacks ran on {len(sample)} test slices (a seeded subsample at most {budget.attack_slices}); the squeezing "
        "detector's threshold is the 95th percentile of the same clean slices' scores, so its false-positive rate is "
        "in-sample.",
        "Feature squeezing is measured against a non-adaptive PGD; an attacker who knows the detector can evade it "
        "(He et al. 2017), so 'after' is an upper bound on the defended accuracy.",
    )
    return section, {"attack_accuracy": attack_accuracy}, limits


def gradcam_layer(network: nn.Module, family: str | None = None) -> str:
    """The name of the layer Grad-CAM reads: the family's last spatial feature map, else the last Conv2d."""
    names = {name for name, _ in network.named_modules()}
    preferred = GRADCAM_LAYERS.get(str(family or ""))
    if preferred in names:
        return str(preferred)
    convolutions = [name for name, module in network.named_modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the network has no Conv2d layer for Grad-CAM to read")
    return convolutions[-1]


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to [0, 1], its maximum at 1; a constant map becomes zeros."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(dim=1).values.reshape((-1,) + (1,) * (maps.ndim - 1))
    span = (flat.max(dim=1).values - flat.min(dim=1).values).reshape(low.shape)
    return torch.where(span > 0, (maps - low) / span.clamp(min=1e-12), torch.zeros_like(maps))


def gradcam_maps(network: nn.Module, images: torch.Tensor, layer: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """MONAI Grad-CAM of the lesion logit, (n, H, W) in [0, 1] per slice (0 everywhere when nothing activates),
    and the target layer's feature-map size (the map's true resolution before upsampling).

    A copy of the network carries the hooks, so the evaluated network is left untouched."""
    from monai.visualize import GradCAM

    explained = copy.deepcopy(network).eval()
    # MONAI's default post-processing maps (min, max) to (1, 0), flipping the map: scale max -> 1 instead.
    cam = GradCAM(nn_module=explained, target_layers=layer, postprocessing=unit_scale)
    maps = cam(x=images.clone(), class_idx=0).detach().numpy()[:, 0].astype(np.float64)
    cells = tuple(int(v) for v in cam.feature_map_size((1, *images.shape[1:]))[2:])
    return maps, cells


def energy_inside_mask(saliency: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the saliency map's mass inside the mask (None when the map is all zeros)."""
    total = float(saliency.sum())
    return None if total <= 0 else float((saliency * mask).sum() / total)


def deletion_curve(probability: Callable[[torch.Tensor], np.ndarray], image: np.ndarray, order: np.ndarray,
                   steps: int, fill: float = 0.0, max_share: float = 1.0) -> np.ndarray:
    """P(lesion) as the pixels of ``order`` are deleted (set to ``fill``) in ``steps`` equal shares up to
    ``max_share`` of the slice, share 0 first.

    Petsiuk, Das & Saenko (2018), RISE: the faster the score falls when the most salient pixels go first, the
    more faithful the map. ``fill`` 0 is the slice mean in z-scored units."""
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    flat = np.asarray(image, dtype=np.float32).reshape(-1)
    counts = np.rint(np.linspace(0, max_share * flat.size, steps + 1)).astype(int)
    batch = np.repeat(flat[None], steps + 1, axis=0)
    for row, count in enumerate(counts):
        batch[row, order[:count]] = fill
    return probability(torch.from_numpy(batch.reshape((steps + 1, *np.shape(image)))))


def _trapezoid(values: np.ndarray, steps: int) -> float:
    """Area under a deletion curve on a unit axis (the mean P(lesion) over the deleted range)."""
    return float(np.trapezoid(values, np.linspace(0.0, 1.0, steps + 1)))


def _classifier_explanations(request: EvaluationRequest, predictor: ImagingPredictor, slices: _Slices,
                             test: np.ndarray, probabilities: np.ndarray, budget: ImagingBudget
                             ) -> tuple[ReportSection, tuple[str, ...]]:
    """Grad-CAM on test slices with a lesion: energy inside the true mask, pointing game, deletion faithfulness,
    and two references that need no explanation method: the lesion occluded, and the lesion deleted first."""
    from scipy import ndimage

    title = "Explanations: Grad-CAM and its faithfulness"
    lesion_test = test[slices.images.presence[test] == 1]
    sample, _ = _one_shape(slices, _seeded_subset(lesion_test, budget.explained_slices, request.seed + 1))
    if len(sample) == 0:
        reason = "the test split holds no slice with a lesion: there is no mask to compare Grad-CAM against"
        return (ReportSection("explanations", title, EXPLANATIONS_CLAUSE, {"undefined": reason, "explained_slices": 0},
                              text=reason), (f"Explanations undefined: {reason}.",))
    network = predictor.network.eval()
    layer = gradcam_layer(network, predictor.spec.get("network", {}).get("family"))
    images = _stack([slices.images.images[i] for i in sample])
    maps, cells = gradcam_maps(network, images, layer)
    masks = np.stack([slices.images.masks[i][0].astype(bool) for i in sample])
    image_size = tuple(int(v) for v in maps.shape[1:])
    tolerance = 0.5 * max(image_size[0] / cells[0], image_size[1] / cells[1])  # half a Grad-CAM cell, in pixels
    distances = np.stack([ndimage.distance_transform_edt(~mask) for mask in masks])  # to the nearest lesion pixel
    energies = [energy_inside_mask(m, t) for m, t in zip(maps, masks)]
    defined = [e for e in energies if e is not None]
    active = [k for k in range(len(sample)) if maps[k].max() > 0]
    peak_distance = np.array([distances[k].reshape(-1)[int(np.argmax(maps[k]))] for k in active])

    def lesion_probability(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(network(batch).reshape(-1)).numpy().astype(np.float64)

    occluded = images.clone()
    occluded[torch.from_numpy(masks[:, None])] = 0.0  # the lesion's pixels set to the slice mean
    clean_p, occluded_p = lesion_probability(images), lesion_probability(occluded)

    steps, share = budget.deletion_steps, budget.deletion_max_share
    rng = np.random.default_rng(request.seed + 2)
    deleted = active[:budget.deletion_slices]
    blank_p = float(lesion_probability(torch.zeros_like(images[:1]))[0])
    curves: dict[str, list[np.ndarray]] = {"gradcam": [], "random": [], "lesion_first": []}
    for k in deleted:
        image = slices.images.images[sample[k]]
        salient_order = np.argsort(-maps[k].reshape(-1), kind="stable")
        lesion_order = np.argsort(distances[k].reshape(-1), kind="stable")
        curves["gradcam"].append(deletion_curve(lesion_probability, image, salient_order, steps, max_share=share))
        curves["lesion_first"].append(deletion_curve(lesion_probability, image, lesion_order, steps, max_share=share))
        curves["random"].append(np.mean([deletion_curve(lesion_probability, image, rng.permutation(maps[k].size),
                                                        steps, max_share=share)
                                         for _ in range(budget.random_orders)], axis=0))
    auc = {name: [_trapezoid(c, steps) for c in found] for name, found in curves.items()}
    faithfulness = [r - g for r, g in zip(auc["random"], auc["gradcam"])]

    def mean(values: Sequence[float]) -> float | None:
        return float(np.mean(values)) if len(values) else None

    summary = {
        "explained_slices": len(sample), "split": "test",
        "method": "Grad-CAM of the lesion logit (monai.visualize.GradCAM, min-max scaled to [0, 1])",
        "target_layer": layer, "feature_map_cells": list(cells), "image_size": list(image_size),
        "sampling": f"seeded (seed {request.seed + 1}) subsample of at most {budget.explained_slices} test slices "
                    "with a lesion",
        "energy_inside_mask_mean": mean(defined),
        "energy_inside_mask_chance": float(masks.mean()),
        "energy_defined_slices": len(defined),
        "pointing_game_tolerance_pixels": tolerance,
        "pointing_game_hit_rate": mean(peak_distance <= tolerance),
        "pointing_game_chance": float(np.mean(distances <= tolerance)),
        "pointing_game_strict_hit_rate": mean(peak_distance == 0),
        "pointing_game_slices": len(active),
        "lesion_occlusion_mean_p_clean": mean(clean_p),
        "lesion_occlusion_mean_p_occluded": mean(occluded_p),
        "deletion_slices": len(deleted), "deletion_steps": steps, "deletion_random_orders": budget.random_orders,
        "deletion_fill": "0 (the slice mean in z-scored units)", "deletion_max_share": share,
        "blank_slice_p": blank_p,
        "deletion_auc_gradcam": mean(auc["gradcam"]),
        "deletion_auc_random": mean(auc["random"]),
        "deletion_auc_lesion_first": mean(auc["lesion_first"]),
        "deletion_faithfulness": mean(faithfulness),
        "deletion_faithfulness_positive_share": mean(np.array(faithfulness) > 0),
    }
    if not defined:
        summary["energy_inside_mask_undefined"] = "Grad-CAM was zero on every explained slice"
    table = Table(
        "Grad-CAM against the true lesion masks", ("measure", "value", "chance / reference", "slices"),
        (("energy inside the mask (share of Grad-CAM mass)", _round(summary["energy_inside_mask_mean"]),
          _round(summary["energy_inside_mask_chance"]), len(defined)),
         (f"pointing game (peak within {tolerance:g} px of the mask)", _round(summary["pointing_game_hit_rate"]),
          _round(summary["pointing_game_chance"]), len(active)),
         ("mean P(lesion), lesion pixels set to the slice mean", _round(summary["lesion_occlusion_mean_p_occluded"]),
          _round(summary["lesion_occlusion_mean_p_clean"]), len(sample)),
         ("deletion AUC, Grad-CAM order (lower: more faithful)", _round(summary["deletion_auc_gradcam"]),
          _round(summary["deletion_auc_random"]), len(deleted)),
         ("deletion AUC, lesion pixels first (reference)", _round(summary["deletion_auc_lesion_first"]),
          _round(summary["deletion_auc_random"]), len(deleted)),
         ("deletion faithfulness (random AUC - Grad-CAM AUC; > 0 is faithful)",
          _round(summary["deletion_faithfulness"]), 0.0, len(deleted))))
    shown = sample[:budget.figure_slices]
    figures = [Figure("Grad-CAM overlays on test slices",
                      _overlay_figure(slices, shown, maps[:len(shown)], probabilities[shown], energies[:len(shown)]),
                      caption="Slice, Grad-CAM heat map, true lesion outline (white). Slices are numbered, not "
                              "named: no identifier is shown.")]
    if deleted:
        figures.append(Figure("Deletion curves", _deletion_figure({name: np.mean(found, axis=0)
                                                                   for name, found in curves.items()},
                                                                  steps, share, len(deleted)),
                              caption="Mean P(lesion) as pixels are set to the slice mean: most salient first, "
                                      "lesion pixels first, and in random order."))
    text = (f"Grad-CAM (Selvaraju et al. 2017, MONAI's implementation) of the lesion logit at layer '{layer}' "
            f"({cells[0]}x{cells[1]} cells), on {len(sample)} test slices with a lesion. Energy inside the mask is "
            "the share of the heat map's mass on the true lesion pixels (chance: the mask's share of the slice); the "
            f"pointing game asks whether the map's peak lies within half a cell ({tolerance:g} px) of the lesion. "
            "Setting the lesion's pixels to the slice mean shows whether the model uses the lesion at all. The "
            "deletion curve (Petsiuk et al. 2018) sets pixels to the slice mean, most salient first, and records "
            f"P(lesion) over the first {share:.0%} of the pixels (the AUC is the mean P over that range); a faithful "
            "map makes it fall faster than random order (faithfulness = random AUC - Grad-CAM AUC > 0); deleting "
            "the lesion's pixels first is the reference a perfect map would approach. A blank slice (every pixel "
            f"at the mean) scores P(lesion) = {blank_p:.2f}.")
    limits = (f"Grad-CAM's resolution is the target layer's {cells[0]}x{cells[1]} cells upsampled to "
              f"{image_size[0]}x{image_size[1]} pixels: it can point at the lesion's neighbourhood, not outline it.",
              "Deletion curves replace pixels by the slice mean, which makes images the network never saw; "
              "random deletion also acts as noise, so the faithfulness score compares orders, not absolute values.")
    section = ReportSection("explanations", title, EXPLANATIONS_CLAUSE, jsonable(summary), (table,), tuple(figures),
                            text)
    return section, limits


def _overlay_figure(slices: _Slices, index: np.ndarray, maps: np.ndarray, probabilities: np.ndarray,
                    energies: Sequence[float | None]) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    n = len(index)
    figure = MplFigure(figsize=(2.3 * n, 2.6))
    for k, row in enumerate(index):
        axes = figure.add_subplot(1, n, k + 1)
        axes.imshow(slices.images.images[row][0], cmap="gray")
        axes.imshow(maps[k], cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
        axes.contour(slices.images.masks[row][0], levels=[0.5], colors="white", linewidths=0.8)
        modality = str(slices.rows.loc[row, "modality"]) if "modality" in slices.rows.columns else ""
        energy = "n/a" if energies[k] is None else f"{energies[k]:.2f}"
        axes.set_title(f"test slice {k + 1} {modality}\nP={probabilities[k]:.2f}, in mask {energy}", fontsize=7)
        axes.axis("off")
    figure.tight_layout()
    return _png(figure)


def _deletion_figure(curves: Mapping[str, np.ndarray], steps: int, max_share: float, n: int) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(4.5, 3.2))
    axes = figure.add_subplot(1, 1, 1)
    shares = np.linspace(0.0, max_share, steps + 1)
    styles = {"gradcam": ("Grad-CAM order", "-"), "lesion_first": ("lesion pixels first", "-."),
              "random": ("random order", "--")}
    for name, values in curves.items():
        label, style = styles.get(name, (name, "-"))
        axes.plot(shares, values, label=label, linestyle=style)
    axes.set_xlabel("share of pixels deleted")
    axes.set_ylabel("mean P(lesion)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"deletion curves, {n} test slices", fontsize=10)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return _png(figure)


# ----------------------------------------------------------------------------- lesion segmentation


class SlidingWindowSegmenter(nn.Module):
    """The segmentation network behind the predictor's sliding-window inference (window, overlap, Gaussian
    blending from model_spec.json), differentiable, so that PGD attacks what the predictor serves.

    ``sw_batch_size`` only groups windows into network calls; the logits do not depend on it."""

    def __init__(self, network: nn.Module, spec: Mapping[str, Any], sw_batch_size: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.roi = (int(spec["roi_size"]),) * 2
        self.sw_batch_size = int(sw_batch_size or spec.get("sw_batch_size", 4))
        self.overlap = float(spec.get("sw_overlap", 0.25))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(images, self.roi, self.sw_batch_size, self.network, overlap=self.overlap,
                                        mode="gaussian")


def case_metrics(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 3) Dice, IoU, HD95 per slice (task_metrics' conventions: NaN where undefined); slices may differ in shape."""
    rows = []
    for p, t in zip(predicted, truth, strict=True):
        cases = segmentation_case_metrics(np.asarray(p, dtype=bool)[None], np.asarray(t, dtype=bool)[None])
        rows.append((cases["dice"][0], cases["iou"][0], cases["hd95"][0]))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 3)


def segment_with_losses(segmenter: nn.Module, images: LesionImages, batch_size: int = 32
                        ) -> tuple[list[np.ndarray], np.ndarray]:
    """One sliding-window pass over every slice: the predicted mask (argmax, as the predictor's) and the per-slice
    training objective (MONAI DiceCELoss, softmax, one-hot truth, background included) that a loss-threshold
    membership attacker reads. Slices of one shape go in batches."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    losses = np.empty(len(images), dtype=np.float64)
    masks: list[np.ndarray] = [np.empty(0)] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(images.images):
        by_shape.setdefault(tuple(image.shape), []).append(k)
    segmenter.eval()
    with torch.no_grad():
        for index in by_shape.values():
            for start in range(0, len(index), batch_size):
                chunk = index[start:start + batch_size]
                logits = segmenter(_stack([images.images[k] for k in chunk]))
                truth = _stack([images.masks[k] for k in chunk])
                predicted = logits.argmax(dim=1).numpy().astype(bool)
                for j, k in enumerate(chunk):
                    losses[k] = float(loss_fn(logits[j:j + 1], truth[j:j + 1]))
                    masks[k] = predicted[j]
    return masks, losses


def _check_against_predictor(predictor: ImagingPredictor, slices: _Slices, masks: Sequence[np.ndarray],
                             n: int = 4) -> None:
    """The evaluation's batched pass must give the served predictor's masks: checked on the first ``n`` slices."""
    served = predictor.predict_masks(list(slices.raw[:n]))
    for k, mask in enumerate(served):
        if not np.array_equal(mask, masks[k]):
            raise RuntimeError(f"slice {k}: the evaluation's sliding-window masks differ from ImagingPredictor's; "
                               "the evaluation would not describe the served model")


def _segmentation_outputs(request: EvaluationRequest, predictor: ImagingPredictor, slices: _Slices,
                          budget: ImagingBudget) -> ModelOutputs:
    truth = [mask[0].astype(bool) for mask in slices.images.masks]
    segmenter = SlidingWindowSegmenter(predictor.network.eval(), predictor.spec, EVALUATION_SW_BATCH_SIZE)
    predicted, losses = segment_with_losses(segmenter, slices.images)
    _check_against_predictor(predictor, slices, predicted)
    model_cases = case_metrics(predicted, truth)
    train = slices.subset(slices.split_mask("train"))
    fitted = segmentation_baseline(train, slices.subset(slices.split_mask("test")))
    baseline_cases = case_metrics(segmentation_baseline_masks(slices.images, fitted.threshold), truth)
    test = np.flatnonzero(slices.split_mask("test"))
    section, gate_values, robustness_limits = _segmentation_robustness(request, segmenter, slices, test, budget)
    model_name, model_version = _model_identity(request)
    n_lesion = int(slices.images.presence[test].sum())
    limits = (
        f"{len(test)} test slices, {n_lesion} with a lesion: Dice and IoU are defined on those only "
        "(MONAI ignore_empty); lesion-free slices show in HD95's undefined counts and in the false-positive masks, "
        "not in the mean Dice.",
        "HD95 is in pixels (the de-identified arrays carry no spacing here) and undefined when either mask is empty.",
        "The intensity-threshold baseline's cut-off is fitted on the training split: its train-row scores are "
        "in-sample.",
        "Membership inference reads the per-slice DiceCE of the whole un-augmented slice; the model was trained on "
        "augmented crops, so an attacker who knows the crops and augmentation could do better than this AUC shows.",
        *robustness_limits,
        "The slices are the synthetic hospital's: lesions are bright round blobs; real lesions vary in shape, "
        "contrast and context, so none of these figures transfers to clinical images without a real-data study.",
    )
    return ModelOutputs(
        task="segmentation", frame=_frame(slices, losses, request.tables.get("patients")),
        y_true=np.zeros(len(slices.rows)), model=model_cases, model_name=model_name, model_version=model_version,
        baseline=baseline_cases,
        baseline_name=f"intensity_threshold (pixels with z-score > {fitted.threshold:g}, fitted on train)",
        sections=(section,), gate_values=gate_values, limits=limits,
        threshold_note="Masks are the argmax of the sliding-window logits (background vs lesion), as trained.",
    )


def _segmentation_robustness(request: EvaluationRequest, segmenter: SlidingWindowSegmenter, slices: _Slices,
                             test: np.ndarray, budget: ImagingBudget
                             ) -> tuple[ReportSection, dict[str, float | None], tuple[str, ...]]:
    """PGD on the soft-Dice loss through the sliding-window inference: Dice against epsilon; perturbation suite."""
    config = R.load_robustness_config()
    policy = request.policy
    gate_epsilon = policy.attack_epsilon if policy is not None else None
    gate_minimum = policy.attack_accuracy_min if policy is not None else None
    title = "Robustness under attack and perturbation (Dice)"
    lesion_test = test[slices.images.presence[test] == 1]
    sample, other_shape = _one_shape(slices, _seeded_subset(lesion_test, budget.segmentation_attack_slices,
                                                             request.seed))
    if len(sample) == 0:
        reason = "the test split holds no slice with a lesion: Dice is undefined, so no attack can be scored"
        return (ReportSection("robustness", title, ROBUSTNESS_CLAUSE, {"undefined": reason, "attacked_slices": 0},
                              text=reason), {"attack_accuracy": None}, (f"Robustness undefined: {reason}.",))
    images = _stack([slices.images.images[i] for i in sample])
    masks = _stack([slices.images.masks[i] for i in sample])
    epsilons = _attack_epsilons(config, "segmentation_epsilons", gate_epsilon)
    options = _pgd_options(config, request.seed)
    curve = R.segmentation_curve(segmenter, images, masks, epsilons, **options)
    perturbations = R.image_perturbation_suite(lambda x: R.segmentation_dice(segmenter, x, masks), images,
                                               config=config, metric="dice", seed=request.seed)
    dice_under_attack = _gate_value(curve, gate_epsilon)
    summary = {
        "attacked_slices": len(sample), "split": "test", "attacked": "test slices with a lesion (Dice is defined)",
        "sampling": f"seeded (seed {request.seed}) subsample of at most {budget.segmentation_attack_slices} "
                    "lesion test slices",
        "slices_left_out_other_shape": other_shape,
        "epsilon_units": "L-inf radius in per-slice z-scored intensity units (what the network sees)",
        "attack": "PGD on 1 - soft Dice of the lesion channel, through the sliding-window inference",
        "pgd": {"steps": options["steps"], "relative_step_size": options["relative_step_size"],
                "random_start": options["random_start"]},
        "clean_dice": curve.clean,
        "pgd_dice": {f"{e:g}": v for e, v in curve.points},
        "gate_epsilon": gate_epsilon,
        "pgd_dice_at_gate_epsilon": dice_under_attack,
        "attack_accuracy_means": "mean Dice under PGD (for segmentation the gate's 'accuracy under attack' is Dice)",
        "perturbations": [p.as_metadata() for p in perturbations],
        "robustness_config_version": config.version,
    }
    table = Table("Dice under PGD on the Dice loss (lesion test slices)", ("epsilon", "mean Dice"),
                  tuple((e, _round(v)) for e, v in curve.points))
    figure = Figure("Dice against epsilon (PGD)",
                    _curve_figure((curve,), "mean Dice", f"lesion segmentation, {len(sample)} lesion test slices",
                                  gate_epsilon, gate_minimum),
                    caption="Eps 0 is the clean Dice; PGD maximises 1 - soft Dice against the true mask.")
    text = (f"White-box L-inf PGD ({options['steps']} steps, random start; Madry et al. 2018) that maximises 1 - soft "
            "Dice of the lesion channel against the true mask, written in plain torch (ART has no segmentation "
            "estimator) and differentiated through the same sliding-window inference with Gaussian blending that "
            f"the predictor serves, on {len(sample)} test slices with a lesion. For segmentation the gate's "
            "'accuracy under attack' is this mean Dice. The perturbation suite adds Gaussian noise and gamma "
            "(contrast) changes and re-normalises each slice. "
            + (f"The gate reads the Dice at eps {gate_epsilon:g}." if gate_epsilon is not None
               else "The spec declares no attack: no gate value."))
    section = ReportSection("robustness", title, ROBUSTNESS_CLAUSE, jsonable(summary),
                            (table, _perturbation_table(perturbations)), (figure,), text)
    limits = (f"PGD ran on {len(sample)} lesion test slices (a seeded subsample of at most "
              f"{budget.segmentation_attack_slices}); "
              "no defence is measured for the segmentation model (feature squeezing is a classifier's detector).",)
    return section, {"attack_accuracy": dice_under_attack}, limits
