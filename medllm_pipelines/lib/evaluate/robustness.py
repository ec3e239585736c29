"""Adversarial robustness and clinical perturbations (issue 12 item 7, clause 5.4.3, row S8).

Plain torch and numpy, on purpose: the attack libraries (torchattacks, ART) pull
in torchvision or estimators we do not need, and ART has no segmentation
estimator. Everything here takes a model as a callable on a float tensor, so
the tabular MLP (on preprocessed or raw clinical features), the CNN
classifier and the UNet are attacked by the same code.

- Attacks: FGSM (Goodfellow et al. 2015) and L-inf PGD with random start
  (Madry et al. 2018) on a classification loss (one logit: binary
  cross-entropy; several: cross-entropy) or on the segmentation soft-Dice
  loss; a score-based black-box random search over the vertices of the L-inf
  ball (the Square Attack's scheme, Andriushchenko et al. 2020) that sees
  probabilities only and keeps a per-example query budget.
- Curves: accuracy (or Dice) under attack against epsilon, the clean value at eps 0.
- Defences, each returning the number before and after: input filtering by the
  clinical plausibility ranges of the quality rules (in raw units, before
  preprocessing), feature squeezing with its L1 detector (Xu, Evans & Qi 2018),
  PGD adversarial training (Madry et al. 2018) and logit-averaging ensembles.
- Clinical perturbations: unit mix-ups with the factors of the units library
  (lib/quality/units via cleaning_rules.yaml), missing values imputed as the
  fitted preprocessing does, measurement noise at a declared CV per feature,
  image noise and contrast (gamma) changes.

A metric that cannot be computed (no input left after filtering, no lesion
image for Dice) is None with the reason in ``details``, never a 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

CONFIG_PATH = Path(__file__).with_name("robustness.yaml")

Model = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProbaFn = Callable[[np.ndarray], np.ndarray]
FrameProbaFn = Callable[[pd.DataFrame], np.ndarray]


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RobustnessConfig:
    """robustness.yaml as read: epsilons, attack and defence settings, the perturbation suite."""

    version: str
    attacks: dict[str, Any]
    defences: dict[str, Any]
    extra_plausible: dict[str, tuple[float, float]]
    perturbations: dict[str, Any]


@lru_cache(maxsize=4)
def load_robustness_config(path: Path = CONFIG_PATH) -> RobustnessConfig:
    raw = yaml.safe_load(Path(path).read_text())
    return RobustnessConfig(
        version=str(raw["version"]),
        attacks=dict(raw.get("attacks") or {}),
        defences=dict(raw.get("defences") or {}),
        extra_plausible={str(k): (float(v[0]), float(v[1])) for k, v in (raw.get("extra_plausible") or {}).items()},
        perturbations=dict(raw.get("perturbations") or {}),
    )


# ----------------------------------------------------------------------------- losses and predictions


def _logits(outputs: torch.Tensor) -> torch.Tensor:
    """(n,) for one-logit outputs ((n,) or (n, 1)), (n, C) for several classes."""
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    return outputs


def _logit_threshold(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"decision threshold must be in (0, 1), got {threshold}")
    return math.log(threshold / (1.0 - threshold))


def classification_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss: binary cross-entropy on one logit, cross-entropy on several."""
    logits = _logits(outputs)
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, labels.long(), reduction="none")


def predicted_labels(outputs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """0/1 at the probability threshold (one logit), argmax otherwise."""
    logits = _logits(outputs)
    if logits.ndim == 1:
        return (logits >= _logit_threshold(threshold)).long()
    return logits.argmax(dim=1)


def _foreground_probability(outputs: torch.Tensor) -> torch.Tensor:
    """(n, H, W) lesion probability: softmax channel 1 of two (the repo's UNet), sigmoid of one."""
    if outputs.shape[1] == 1:
        return torch.sigmoid(outputs[:, 0])
    return torch.softmax(outputs, dim=1)[:, 1]


def soft_dice_loss(outputs: torch.Tensor, masks: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Per-image 1 - soft Dice of the lesion channel: what PGD maximises on a segmentation model."""
    probability = _foreground_probability(outputs).flatten(1)
    truth = masks.reshape(masks.shape[0], -1).to(probability.dtype)
    overlap = (probability * truth).sum(dim=1)
    return 1.0 - (2.0 * overlap + smooth) / (probability.sum(dim=1) + truth.sum(dim=1) + smooth)


@contextlib.contextmanager
def _evaluating(model: Model) -> Iterator[None]:
    """Eval mode while attacking (no dropout noise in gradients), the caller's mode restored after."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _outputs(model: Model, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with torch.no_grad(), _evaluating(model):
        return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def classification_accuracy(model: Model, inputs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    """Share of inputs whose predicted class equals the label."""
    if len(inputs) == 0:
        raise ValueError("no inputs to score")
    predicted = predicted_labels(_outputs(model, inputs), threshold)
    return float((predicted == labels.long()).float().mean())


def segmentation_dice(model: Model, images: torch.Tensor, masks: torch.Tensor) -> float | None:
    """Mean Dice over images with a lesion, as training scores it (images.segmentation_metrics); None if none has."""
    from medllm_pipelines.lib.train.imaging.images import segmentation_metrics

    outputs = _outputs(model, images, batch_size=64)
    predicted = (_foreground_probability(outputs) >= 0.5).numpy()
    truth = masks.reshape(predicted.shape).numpy().astype(bool)
    dice = segmentation_metrics(list(predicted), list(truth))["dice"]
    return None if math.isnan(dice) else float(dice)


# ----------------------------------------------------------------------------- white-box attacks


def _radius(eps: float | Sequence[float] | torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """eps as a tensor broadcastable to the inputs: a scalar, or one radius per feature (last axis)."""
    radius = torch.as_tensor(np.asarray(eps, dtype=np.float64) if not torch.is_tensor(eps) else eps,
                             dtype=like.dtype, device=like.device)
    if (radius < 0).any():
        raise ValueError("eps must be >= 0")
    return radius


def _project(adversarial: torch.Tensor, inputs: torch.Tensor, radius: torch.Tensor, mask: torch.Tensor | None,
             bounds: tuple[Any, Any] | None) -> torch.Tensor:
    delta = torch.maximum(torch.minimum(adversarial - inputs, radius), -radius)
    if mask is not None:
        delta = delta * mask
    projected = inputs + delta
    if bounds is not None:
        low, high = (torch.as_tensor(b, dtype=inputs.dtype) if b is not None else None for b in bounds)
        projected = torch.clamp(projected, min=low, max=high)
    return projected.detach()


def _input_gradient(model: Model, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example loss, d loss / d inputs); parameters' .grad is left untouched."""
    inputs = inputs.detach().requires_grad_(True)
    losses = loss_fn(model(inputs), targets)
    (gradient,) = torch.autograd.grad(losses.sum(), inputs)
    return losses.detach(), gradient.detach()


def fgsm(model: Model, inputs: torch.Tensor, targets: torch.Tensor, eps: Any, *,
         loss_fn: LossFn = classification_loss, feature_mask: torch.Tensor | None = None,
         bounds: tuple[Any, Any] | None = None) -> torch.Tensor:
    """Fast gradient sign method: one step of size eps along the sign of the loss gradient.

    Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015. ``feature_mask`` (1 = may change) keeps e.g. one-hot
    columns fixed; ``bounds`` clamps to a valid input range.
    """
    radius = _radius(eps, inputs)
    with _evaluating(model):
        _, gradient = _input_gradient(model, loss_fn, inputs, targets)
    return _project(inputs + radius * gradient.sign(), inputs, radius, feature_mask, bounds)


def pgd(model: Model, inputs: torch.Tensor, targets: torch.Tensor, eps: Any, *, steps: int = 20,
        step_size: Any = None, relative_step_size: float = 2.5, random_start: bool = True,
        loss_fn: LossFn = classification_loss, feature_mask: torch.Tensor | None = None,
        bounds: tuple[Any, Any] | None = None, seed: int = 0) -> torch.Tensor:
    """L-inf projected gradient descent (ascent on the loss) from a uniform random start in the ball.

    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", ICLR 2018. Step size defaults to
    ``relative_step_size * eps / steps`` (their 2.5 eps / steps). Per example,
    the iterate with the highest loss seen is returned (not merely the last),
    so more steps never weaken the attack.
    """
    if steps < 1:
        raise ValueError("PGD needs at least one step")
    radius = _radius(eps, inputs)
    alpha = _radius(step_size, inputs) if step_size is not None else radius * (relative_step_size / steps)
    adversarial = inputs.detach().clone()
    if random_start:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype) * 2.0 - 1.0
        adversarial = _project(inputs + noise * radius, inputs, radius, feature_mask, bounds)
    best = adversarial.clone()
    best_loss = torch.full((len(inputs),), -math.inf, dtype=inputs.dtype)
    with _evaluating(model):
        for _ in range(steps):
            losses, gradient = _input_gradient(model, loss_fn, adversarial, targets)
            better = losses > best_loss
            best[better], best_loss[better] = adversarial[better], losses[better]
            adversarial = _project(adversarial + alpha * gradient.sign(), inputs, radius, feature_mask, bounds)
        with torch.no_grad():
            losses = loss_fn(model(adversarial), targets)
    better = losses > best_loss
    best[better] = adversarial[better]
    return best.detach()


def pgd_segmentation(model: Model, images: torch.Tensor, masks: torch.Tensor, eps: float, **options: Any) -> torch.Tensor:
    """PGD that maximises 1 - soft Dice of the lesion channel against the true mask (ART has no such estimator)."""
    return pgd(model, images, masks, eps, loss_fn=soft_dice_loss, **options)


# ----------------------------------------------------------------------------- black-box attack


@dataclass
class BlackBoxResult:
    """Adversarial inputs, queries spent per example (the clean query included) and which succeeded."""

    adversarial: np.ndarray
    queries: np.ndarray
    success: np.ndarray
    query_budget: int
    eps: Any

    def as_metadata(self) -> dict[str, Any]:
        return {"attack": "random_search_linf", "query_budget": self.query_budget,
                "mean_queries": float(self.queries.mean()) if len(self.queries) else None,
                "max_queries": int(self.queries.max()) if len(self.queries) else 0,
                "success_rate": float(self.success.mean()) if len(self.success) else None}


def _margin(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Distance from a wrong decision: > 0 correct, <= 0 wrong (binary: p - t for y=1, t - p for y=0)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 1:
        margin = np.where(labels == 1, probabilities - threshold, threshold - probabilities)
        # p == t is predicted positive: for a negative that is already wrong
        return np.where((labels == 0) & (probabilities >= threshold), np.minimum(margin, -1e-12), margin)
    rows = np.arange(len(labels))
    true = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    return true - others.max(axis=1)


def random_search_attack(predict_proba: ProbaFn, inputs: np.ndarray, labels: np.ndarray, eps: Any, *,
                         query_budget: int = 200, initial_fraction: float = 0.5,
                         feature_mask: np.ndarray | None = None, bounds: tuple[Any, Any] | None = None,
                         threshold: float = 0.5, seed: int = 0) -> BlackBoxResult:
    """Score-based black-box L-inf attack: random search over the vertices of the eps-ball.

    The Square Attack's scheme (Andriushchenko, Croce, Flammarion & Hein,
    "Square Attack: a query-efficient black-box adversarial attack via random
    search", ECCV 2020) for feature vectors: start at a random vertex, then
    each query re-draws the signs of a random subset of features (the subset
    shrinks as the budget is used) and keeps the proposal if it lowers the
    margin of the true class. Only probabilities are seen. Each example spends
    at most ``query_budget`` queries, its clean query included, and stops at
    its first success; ``predict_proba`` is only ever called on active rows.
    """
    if query_budget < 1:
        raise ValueError("query_budget must be >= 1")
    inputs = np.asarray(inputs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    n, d = inputs.shape
    radius = np.broadcast_to(np.asarray(eps, dtype=np.float64), (d,))
    free = np.ones(d, dtype=bool) if feature_mask is None else np.broadcast_to(np.asarray(feature_mask) > 0, (d,))
    free_index = np.flatnonzero(free & (radius > 0))
    rng = np.random.default_rng(seed)
    queries = np.zeros(n, dtype=np.int64)

    def clip(values: np.ndarray) -> np.ndarray:
        if bounds is None:
            return values
        return np.clip(values, bounds[0] if bounds[0] is not None else -np.inf,
                       bounds[1] if bounds[1] is not None else np.inf)

    def query(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        queries[rows] += 1
        return _margin(predict_proba(candidates), labels[rows], threshold)

    best = inputs.copy()
    best_margin = query(np.arange(n), inputs) if n else np.empty(0)
    active = best_margin > 0
    if len(free_index) == 0:
        return BlackBoxResult(best, queries, ~active, query_budget, eps)

    def vertex(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        signs = rng.choice([-1.0, 1.0], size=(len(rows), len(columns)))
        return inputs[np.ix_(rows, columns)] + signs * radius[columns]

    iteration = 0
    while True:
        rows = np.flatnonzero(active & (queries < query_budget))
        if len(rows) == 0:
            break
        candidates = best[rows].copy()
        if iteration == 0:  # the random vertex start
            candidates[:, free_index] = vertex(rows, free_index)
        else:
            fraction = initial_fraction * (1.0 - iteration / query_budget)
            k = max(1, int(round(fraction * len(free_index))))
            columns = np.sort(rng.choice(free_index, size=k, replace=False))
            candidates[:, columns] = vertex(rows, columns)
        candidates = clip(candidates)
        margin = query(rows, candidates)
        improved = margin < best_margin[rows]
        best[rows[improved]] = candidates[improved]
        best_margin[rows[improved]] = margin[improved]
        active[rows] = best_margin[rows] > 0
        iteration += 1
    return BlackBoxResult(best, queries, best_margin <= 0, query_budget, eps)


def _proba_accuracy(predict_proba: ProbaFn, inputs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return float(np.mean(_margin(predict_proba(inputs), np.asarray(labels).astype(np.int64), threshold) > 0))


# ----------------------------------------------------------------------------- curves


@dataclass
class RobustnessCurve:
    """(eps, value) points, eps 0 the clean value; value None where the metric is undefined."""

    attack: str
    metric: str
    points: list[tuple[float, float | None]]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> float | None:
        return self.points[0][1]

    def value_at(self, eps: float) -> float | None:
        for point_eps, value in self.points:
            if math.isclose(point_eps, eps, rel_tol=1e-9, abs_tol=1e-12):
                return value
        raise KeyError(f"no point at eps={eps} on the {self.attack} curve")

    def as_metadata(self) -> dict[str, Any]:
        return {"attack": self.attack, "metric": self.metric,
                "points": [{"eps": e, self.metric: v} for e, v in self.points], **self.details}


def _epsilons(epsilons: Sequence[float]) -> list[float]:
    values = sorted({float(e) for e in epsilons if float(e) > 0})
    if not values:
        raise ValueError("a robustness curve needs at least one epsilon > 0")
    return values


def attack_curve(model: Model, inputs: torch.Tensor, labels: torch.Tensor, epsilons: Sequence[float], *,
                 attack: str = "pgd", threshold: float = 0.5, eps_scale: Any = 1.0, **options: Any) -> RobustnessCurve:
    """Accuracy under FGSM or PGD at each eps (times ``eps_scale``, e.g. per-feature standard deviations)."""
    attacks = {"fgsm": fgsm, "pgd": pgd}
    if attack not in attacks:
        raise ValueError(f"attack must be one of {sorted(attacks)}, got {attack!r}")
    scale = np.asarray(eps_scale, dtype=np.float64)
    points: list[tuple[float, float | None]] = [(0.0, classification_accuracy(model, inputs, labels, threshold))]
    for eps in _epsilons(epsilons):
        adversarial = attacks[attack](model, inputs, labels, eps * scale, **options)
        points.append((eps, classification_accuracy(model, adversarial, labels, threshold)))
    return RobustnessCurve(attack, "accuracy", points)


def segmentation_curve(model: Model, images: torch.Tensor, masks: torch.Tensor, epsilons: Sequence[float],
                       **options: Any) -> RobustnessCurve:
    """Dice under PGD on the soft-Dice loss at each eps."""
    points: list[tuple[float, float | None]] = [(0.0, segmentation_dice(model, images, masks))]
    for eps in _epsilons(epsilons):
        points.append((eps, segmentation_dice(model, pgd_segmentation(model, images, masks, eps, **options), masks)))
    return RobustnessCurve("pgd_dice", "dice", points)


def black_box_curve(predict_proba: ProbaFn, inputs: np.ndarray, labels: np.ndarray, epsilons: Sequence[float], *,
                    eps_scale: Any = 1.0, threshold: float = 0.5, **options: Any) -> RobustnessCurve:
    """Accuracy under the random-search attack at each eps; queries spent per eps in ``details``."""
    scale = np.asarray(eps_scale, dtype=np.float64)
    points: list[tuple[float, float | None]] = [(0.0, _proba_accuracy(predict_proba, inputs, labels, threshold))]
    spent: dict[str, Any] = {}
    for eps in _epsilons(epsilons):
        result = random_search_attack(predict_proba, inputs, labels, eps * scale, threshold=threshold, **options)
        points.append((eps, float(1.0 - result.success.mean())))
        spent[str(eps)] = result.as_metadata()
    return RobustnessCurve("random_search_linf", "accuracy", points, {"queries": spent})


# ----------------------------------------------------------------------------- raw clinical feature space


class RawFeatureModel(nn.Module):
    """The network composed with the fitted preprocessing, as a function of the raw numeric inputs of given rows.

    For complete numeric inputs the fitted preprocessing (scaling, one-hot,
    feature selection, PCA) is affine, so ``outputs = network(offset + raw @ J.T)``
    with J probed from the pipeline itself and checked to be constant. This
    lets gradient attacks move values in clinical units (mmol/L, %, mmHg),
    where the plausibility ranges of the quality rules apply. Categorical
    columns stay as in each row (``offset`` is per row): the module scores the
    rows it was built from, in order.
    """

    def __init__(self, network: nn.Module, jacobian: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("jacobian", jacobian)
        self.register_buffer("offset", offset)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if len(raw) != len(self.offset):
            raise ValueError(f"built for {len(self.offset)} rows, got {len(raw)}")
        return self.network(self.offset + raw @ self.jacobian.T)


@dataclass
class RawFeatures:
    """Rows in raw units ready to attack: the model, the values, their names and per-feature scales."""

    model: RawFeatureModel
    values: torch.Tensor  # (n, k) float32, raw units, missing values filled as stated in ``filled``
    columns: list[str]
    scale: np.ndarray  # (k,) the training standard deviation (z-score) or range (min-max) per column
    filled: dict[str, int]

    def to_frame(self, values: torch.Tensor | np.ndarray, template: pd.DataFrame) -> pd.DataFrame:
        """``template`` with its numeric columns replaced by ``values`` (e.g. adversarial ones)."""
        out = template.copy()
        out[self.columns] = np.asarray(values.detach().numpy() if torch.is_tensor(values) else values, dtype=float)
        return out


def raw_feature_model(network: nn.Module, preprocessing: Any, frame: pd.DataFrame) -> RawFeatures:
    """Build :class:`RawFeatureModel` for the rows of ``frame`` (a TabularPredictor's network and preprocessing).

    Missing numeric values are first filled with the preprocessing's fitted
    imputation value (an attacker submits complete inputs); how many were
    filled per column is reported. Raises if the pipeline is not affine in
    the numeric inputs.
    """
    described = preprocessing.describe()
    columns = list(preprocessing.spec.numeric_columns)
    if not columns:
        raise ValueError("the preprocessing has no numeric columns to attack")
    imputation = described["imputation_values"]
    complete = frame.copy()
    filled = {c: int(complete[c].isna().sum()) for c in columns}
    for column in columns:
        complete[column] = pd.to_numeric(complete[column]).astype(float).fillna(imputation[column])
    raw = complete[columns].to_numpy(dtype=np.float64)
    base = preprocessing.transform_array(complete).astype(np.float64)
    jacobian = np.empty((base.shape[1], len(columns)))
    for j, column in enumerate(columns):
        step = max(1.0, abs(float(np.nanmedian(raw[:, j]))))
        probe = complete.assign(**{column: complete[column] + step})
        difference = (preprocessing.transform_array(probe).astype(np.float64) - base) / step
        if not np.allclose(difference, difference[:1], atol=1e-4):
            raise ValueError(f"the preprocessing is not affine in {column}: gradient attacks in raw units need it")
        jacobian[:, j] = difference[0]
    if "zscore" in described:
        scale = np.asarray(described["zscore"]["scale"], dtype=float)
    elif "minmax" in described:
        scale = np.asarray(described["minmax"]["max"], dtype=float) - np.asarray(described["minmax"]["min"], dtype=float)
    else:
        scale = np.nanstd(raw, axis=0)
    offset = base - raw @ jacobian.T
    model = RawFeatureModel(network, torch.tensor(jacobian, dtype=torch.float32), torch.tensor(offset, dtype=torch.float32))
    return RawFeatures(model, torch.tensor(raw, dtype=torch.float32), columns, scale, filled)


# ----------------------------------------------------------------------------- defences


@dataclass
class DefenceResult:
    """One defence measured on one attack: the metric without the defence (before) and with it (after)."""

    defence: str
    attack: str
    eps: float
    metric: str
    before: float | None
    after: float | None
    details: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {"defence": self.defence, "attack": self.attack, "eps": self.eps, "metric": self.metric,
                "before": self.before, "after": self.after, **self.details}


@dataclass(frozen=True)
class PlausibilityFilter:
    """Rejects inputs outside the clinical plausibility ranges, in raw units, before preprocessing.

    Ranges of observation concepts are the quality stage's (cleaning_rules.yaml
    ``concepts.*.plausible``); others (age) are declared in robustness.yaml. A
    missing value is not out of range: the preprocessing imputes it.
    """

    ranges: dict[str, tuple[float, float]]
    version: str = ""

    @classmethod
    def from_rules(cls, rules: Any = None, config: RobustnessConfig | None = None) -> PlausibilityFilter:
        from medllm_pipelines.lib.quality.cleaning import load_rules

        rules = rules or load_rules()
        config = config or load_robustness_config()
        ranges = {str(c): (float(s["plausible"][0]), float(s["plausible"][1]))
                  for c, s in rules.concepts.items() if "plausible" in s}
        ranges.update(config.extra_plausible)
        return cls(ranges, f"cleaning_rules {rules.version}, robustness {config.version}")

    def violations(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Boolean frame, one column per checked feature present in ``frame``: True where out of range."""
        checked = {c: r for c, r in self.ranges.items() if c in frame.columns}
        return pd.DataFrame({c: ((pd.to_numeric(frame[c]) < low) | (pd.to_numeric(frame[c]) > high)).to_numpy()
                             for c, (low, high) in checked.items()}, index=frame.index)

    def accepted(self, frame: pd.DataFrame) -> np.ndarray:
        violations = self.violations(frame)
        if violations.shape[1] == 0:
            return np.ones(len(frame), dtype=bool)
        return ~violations.to_numpy().any(axis=1)


def _frame_accuracy(predict_proba: FrameProbaFn, frame: pd.DataFrame, labels: np.ndarray, threshold: float) -> float | None:
    if len(frame) == 0:
        return None
    return float(np.mean((np.asarray(predict_proba(frame)) >= threshold).astype(int) == np.asarray(labels)))


def filtering_defence(predict_proba: FrameProbaFn, adversarial: pd.DataFrame, labels: np.ndarray,
                      plausibility: PlausibilityFilter, *, clean: pd.DataFrame | None = None, attack: str = "",
                      eps: float = 0.0, threshold: float = 0.5) -> DefenceResult:
    """Accuracy on all adversarial inputs (before) and on those the plausibility filter accepts (after).

    ``details``: the share of adversarial inputs rejected, the features that
    tripped the filter and, given the clean rows, the share of clean inputs
    wrongly rejected. ``after`` is None (not 0) when every input is rejected.
    """
    labels = np.asarray(labels).astype(int)
    accepted = plausibility.accepted(adversarial)
    violations = plausibility.violations(adversarial)
    details: dict[str, Any] = {
        "rejected_share": float(1.0 - accepted.mean()) if len(accepted) else None,
        "n_inputs": int(len(accepted)), "n_rejected": int((~accepted).sum()),
        "rejected_by_feature": {c: int(violations[c].sum()) for c in violations.columns if violations[c].any()},
        "ranges_version": plausibility.version,
    }
    if clean is not None:
        details["clean_rejected_share"] = float(1.0 - plausibility.accepted(clean).mean()) if len(clean) else None
    after = _frame_accuracy(predict_proba, adversarial[accepted], labels[accepted], threshold)
    if after is None:
        details["after_undefined"] = "every input was rejected"
    return DefenceResult("plausibility_filter", attack, eps, "accuracy",
                         _frame_accuracy(predict_proba, adversarial, labels, threshold), after, details)


def bit_depth_squeeze(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Each image's intensities min-max scaled to [0, 1], rounded to 2**bits levels, scaled back.

    Xu et al. squeeze [0, 1] pixels; our slices are z-scored, so the range is per image.
    """
    if not 1 <= bits <= 16:
        raise ValueError("bits must be in 1..16")
    flat = images.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    shape = (-1,) + (1,) * (images.ndim - 1)
    span = torch.clamp(high - low, min=1e-12).reshape(shape)
    levels = 2**bits - 1
    unit = (images - low.reshape(shape)) / span
    return torch.round(unit * levels) / levels * span + low.reshape(shape)


def median_squeeze(images: torch.Tensor, size: int = 2) -> torch.Tensor:
    """size x size median filter per channel (reflect padding): Xu et al.'s local spatial smoothing."""
    if size < 2:
        raise ValueError("median filter size must be >= 2")
    n, c, h, w = images.shape
    top, left = (size - 1) // 2, (size - 1) // 2
    padded = F.pad(images, (left, size - 1 - left, top, size - 1 - top), mode="reflect")
    patches = F.unfold(padded, kernel_size=size)  # (n, c*size*size, h*w)
    return patches.reshape(n, c, size * size, h * w).median(dim=2).values.reshape(n, c, h, w)


def _probabilities(outputs: torch.Tensor) -> torch.Tensor:
    logits = _logits(outputs)
    if logits.ndim == 1:
        positive = torch.sigmoid(logits)
        return torch.stack([1.0 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def squeezing_scores(model: Model, images: torch.Tensor, *, bits: int = 4, median_size: int = 2) -> np.ndarray:
    """Per image, the largest L1 distance between the prediction on it and on a squeezed copy (Xu et al. 2018)."""
    original = _probabilities(_outputs(model, images))
    distances = [(original - _probabilities(_outputs(model, squeezed))).abs().sum(dim=1)
                 for squeezed in (bit_depth_squeeze(images, bits), median_squeeze(images, median_size))]
    return torch.stack(distances, dim=1).max(dim=1).values.numpy()


def feature_squeezing_defence(model: Model, clean: torch.Tensor, adversarial: torch.Tensor, labels: torch.Tensor, *,
                              bits: int = 4, median_size: int = 2, false_positive_rate: float = 0.05,
                              attack: str = "", eps: float = 0.0, threshold: float = 0.5) -> DefenceResult:
    """Feature squeezing as a detector (Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial
    Examples in Deep Neural Networks", NDSS 2018).

    The detection threshold is the (1 - false_positive_rate) quantile of the
    clean images' scores. ``before``: accuracy on the adversarial images;
    ``after``: the share of adversarial images the defended system handles -
    detected (flagged for a human) or, if not flagged, classified correctly.
    ``details`` adds the detection rate, the clean false-positive rate and the
    accuracy of the median-squeezed model on the adversarial images.
    """
    clean_scores = squeezing_scores(model, clean, bits=bits, median_size=median_size)
    adversarial_scores = squeezing_scores(model, adversarial, bits=bits, median_size=median_size)
    cutoff = float(np.quantile(clean_scores, 1.0 - false_positive_rate))
    detected = adversarial_scores > cutoff
    correct = (predicted_labels(_outputs(model, adversarial), threshold) == labels.long()).numpy()
    squeezed = classification_accuracy(model, median_squeeze(adversarial, median_size), labels, threshold)
    return DefenceResult(
        "feature_squeezing", attack, eps, "accuracy", float(correct.mean()), float(np.mean(detected | correct)),
        {"detection_rate": float(detected.mean()), "clean_false_positive_rate": float(np.mean(clean_scores > cutoff)),
         "score_threshold": cutoff, "squeezed_accuracy": squeezed,
         "clean_accuracy": classification_accuracy(model, clean, labels, threshold),
         "bit_depth": bits, "median_size": median_size},
    )


def train_classifier(network: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, epochs: int = 60,
                     lr: float = 0.01, batch_size: int = 64, adversarial_eps: float = 0.0, pgd_steps: int = 7,
                     clean_fraction: float = 0.5, feature_mask: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Minibatch Adam on the classification loss; with ``adversarial_eps`` > 0, PGD adversarial training.

    Madry et al. (2018): each batch's examples are replaced by PGD examples
    against the current weights; ``clean_fraction`` of the loss stays on the
    clean batch (Goodfellow et al. 2015's mixed objective), which keeps clean
    accuracy on small tabular sets. Plain torch, to keep the attack loop and
    the training loop visibly the same code.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            batch = order[start:start + batch_size]
            features, targets = inputs[batch], labels[batch]
            loss = classification_loss(network(features), targets).mean()
            if adversarial_eps > 0:
                adversarial = pgd(network, features, targets, adversarial_eps, steps=pgd_steps,
                                  feature_mask=feature_mask, seed=seed * 100003 + epoch * 1009 + start)
                network.train()
                adversarial_loss = classification_loss(network(adversarial), targets).mean()
                loss = clean_fraction * loss + (1.0 - clean_fraction) * adversarial_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return network.eval()


def adversarial_training_defence(standard: Model, robust: Model, inputs: torch.Tensor, labels: torch.Tensor,
                                 eps: float, *, threshold: float = 0.5, **pgd_options: Any) -> DefenceResult:
    """PGD accuracy of the standard model (before) and of the PGD-trained one (after), each attacked white-box."""
    before = classification_accuracy(standard, pgd(standard, inputs, labels, eps, **pgd_options), labels, threshold)
    after = classification_accuracy(robust, pgd(robust, inputs, labels, eps, **pgd_options), labels, threshold)
    return DefenceResult("adversarial_training", "pgd", float(eps), "accuracy", before, after, {
        "clean_accuracy_standard": classification_accuracy(standard, inputs, labels, threshold),
        "clean_accuracy_adversarially_trained": classification_accuracy(robust, inputs, labels, threshold)})


class LogitAverage(nn.Module):
    """An ensemble whose output is the mean of its members' logits: differentiable, so attackable white-box."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([_logits(member(inputs)) for member in self.members]).mean(dim=0)


def ensemble_defence(members: Sequence[nn.Module], inputs: torch.Tensor, labels: torch.Tensor, eps: float, *,
                     threshold: float = 0.5, **pgd_options: Any) -> DefenceResult:
    """Mean member accuracy under PGD on itself (before) against the logit-averaging ensemble's under PGD on
    the whole ensemble (after); ``details`` adds the transfer case (PGD on the first member, scored by the
    ensemble) and clean accuracies."""
    ensemble = LogitAverage(members).eval()  # built in train mode; _evaluating would hand that mode back to the members
    member_scores = [classification_accuracy(m, pgd(m, inputs, labels, eps, **pgd_options), labels, threshold)
                     for m in members]
    after = classification_accuracy(ensemble, pgd(ensemble, inputs, labels, eps, **pgd_options), labels, threshold)
    transferred = pgd(members[0], inputs, labels, eps, **pgd_options)
    return DefenceResult("logit_average_ensemble", "pgd", float(eps), "accuracy", float(np.mean(member_scores)), after, {
        "member_accuracy_under_attack": member_scores,
        "ensemble_accuracy_transfer_from_member_0": classification_accuracy(ensemble, transferred, labels, threshold),
        "clean_accuracy_members": [classification_accuracy(m, inputs, labels, threshold) for m in members],
        "clean_accuracy_ensemble": classification_accuracy(ensemble, inputs, labels, threshold),
        "n_members": len(members)})


# ----------------------------------------------------------------------------- clinical perturbations


@dataclass
class PerturbationResult:
    """The metric on clean inputs and under one perturbation."""

    perturbation: str
    target: str
    metric: str
    clean: float | None
    perturbed: float | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def change(self) -> float | None:
        if self.clean is None or self.perturbed is None:
            return None
        return self.perturbed - self.clean

    def as_metadata(self) -> dict[str, Any]:
        return {"perturbation": self.perturbation, "target": self.target, "metric": self.metric,
                "clean": self.clean, "perturbed": self.perturbed, "change": self.change, **self.details}


@dataclass(frozen=True)
class UnitMixup:
    """A value measured in ``given_in`` written where ``canonical_unit`` is expected.

    The number written is the inverse of the cleaning conversion
    (canonical = value * scale + offset): glucose 5.5 mmol/L written as its
    mg/dL number 99.1 (x 18.016); HbA1c 6.5 % written as its IFCC 47.5 mmol/mol.
    """

    column: str
    given_in: str
    canonical_unit: str
    scale: float
    offset: float
    method: str

    def written_value(self, canonical_value: Any) -> Any:
        return (canonical_value - self.offset) / self.scale


def unit_mixup(column: str, given_in: str, rules: Any = None) -> UnitMixup:
    """The mix-up of ``column`` with a unit the cleaning rules accept, its factor from the units library."""
    from medllm_pipelines.lib.quality.cleaning import load_rules

    rules = rules or load_rules()
    conversion = rules.conversion(column, given_in)
    if conversion is None:
        raise ValueError(f"cleaning rules accept no unit {given_in!r} for {column!r}")
    return UnitMixup(column, given_in, conversion.canonical_unit, conversion.scale, conversion.offset, conversion.method)


def apply_unit_mixup(frame: pd.DataFrame, mixup: UnitMixup) -> pd.DataFrame:
    out = frame.copy()
    out[mixup.column] = mixup.written_value(pd.to_numeric(out[mixup.column]).astype(float))
    return out


def set_missing(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``column`` missing on every row: the model's own preprocessing imputes it, as it would in serving."""
    if column not in frame.columns:
        raise KeyError(f"no column {column!r}")
    out = frame.copy()
    out[column] = np.nan
    return out


def measurement_noise(frame: pd.DataFrame, cvs: Mapping[str, float], *, multiplier: float = 1.0,
                      seed: int = 0) -> pd.DataFrame:
    """Multiplicative Gaussian noise, value * (1 + k * CV * z), per declared column present in ``frame``."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for column, cv in cvs.items():
        if column in out.columns and cv > 0:
            values = pd.to_numeric(out[column]).astype(float)
            out[column] = values * (1.0 + multiplier * float(cv) * rng.standard_normal(len(values)))
    return out


def tabular_perturbation_suite(predict_proba: FrameProbaFn, frame: pd.DataFrame, labels: np.ndarray, *,
                               config: RobustnessConfig | None = None, rules: Any = None, threshold: float = 0.5,
                               plausibility: PlausibilityFilter | None = None, missing_columns: Sequence[str] | None = None,
                               seed: int = 0) -> list[PerturbationResult]:
    """Accuracy of a raw-frame model (e.g. ``TabularPredictor.predict_proba``) under each clinical perturbation.

    Unit mix-ups, each numeric feature missing in turn, measurement noise at
    each declared CV multiplier. Given a plausibility filter, each mix-up also
    reports the share of rows the filter would reject. ``missing_columns``
    defaults to the frame's columns with a declared CV or plausibility range.
    """
    config = config or load_robustness_config()
    labels = np.asarray(labels).astype(int)
    settings = config.perturbations
    clean = _frame_accuracy(predict_proba, frame, labels, threshold)
    results: list[PerturbationResult] = []
    for entry in settings.get("unit_mixups") or []:
        if entry["column"] not in frame.columns:
            continue
        mixup = unit_mixup(entry["column"], entry["given_in"], rules)
        perturbed = apply_unit_mixup(frame, mixup)
        details: dict[str, Any] = {"given_in": mixup.given_in, "canonical_unit": mixup.canonical_unit,
                                   "conversion_scale": mixup.scale, "conversion_offset": mixup.offset,
                                   "conversion_method": mixup.method}
        if plausibility is not None:
            details["rejected_share"] = float(1.0 - plausibility.accepted(perturbed).mean())
        results.append(PerturbationResult("unit_mixup", mixup.column, "accuracy", clean,
                                          _frame_accuracy(predict_proba, perturbed, labels, threshold), details))
    if missing_columns is None:
        declared = {*(settings.get("measurement_cv") or {}), *config.extra_plausible}
        missing_columns = [c for c in frame.columns if c in declared]
    for column in missing_columns:
        results.append(PerturbationResult("missing", column, "accuracy", clean,
                                          _frame_accuracy(predict_proba, set_missing(frame, column), labels, threshold)))
    cvs = {c: float(v) for c, v in (settings.get("measurement_cv") or {}).items() if c in frame.columns}
    for multiplier in settings.get("noise_multipliers") or [1.0]:
        noisy = measurement_noise(frame, cvs, multiplier=float(multiplier), seed=seed)
        results.append(PerturbationResult("measurement_noise", ",".join(sorted(cvs)), "accuracy", clean,
                                          _frame_accuracy(predict_proba, noisy, labels, threshold),
                                          {"cv_multiplier": float(multiplier), "cv": cvs}))
    return results


def _renormalise(images: torch.Tensor) -> torch.Tensor:
    """Per-image z-score, as normalise_slice does to every slice before the network."""
    flat = images.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    shape = (-1,) + (1,) * (images.ndim - 1)
    return torch.where(std.reshape(shape) > 0, (images - mean.reshape(shape)) / std.clamp(min=1e-12).reshape(shape),
                       torch.zeros_like(images))


def image_noise(images: torch.Tensor, sigma: float, *, seed: int = 0, renormalise: bool = True) -> torch.Tensor:
    """Additive Gaussian noise of ``sigma`` (z-score units), then the per-slice normalisation again."""
    generator = torch.Generator().manual_seed(seed)
    noisy = images + sigma * torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return _renormalise(noisy) if renormalise else noisy


def contrast_change(images: torch.Tensor, gamma: float, *, renormalise: bool = True) -> torch.Tensor:
    """Gamma curve on each image's min-max range (a window/contrast change that z-scoring does not undo)."""
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    flat = images.flatten(1)
    shape = (-1,) + (1,) * (images.ndim - 1)
    low, high = flat.min(dim=1).values.reshape(shape), flat.max(dim=1).values.reshape(shape)
    span = torch.clamp(high - low, min=1e-12)
    changed = ((images - low) / span) ** gamma * span + low
    return _renormalise(changed) if renormalise else changed


def image_perturbation_suite(score: Callable[[torch.Tensor], float | None], images: torch.Tensor, *,
                             config: RobustnessConfig | None = None, metric: str = "accuracy",
                             seed: int = 0) -> list[PerturbationResult]:
    """``score`` (e.g. ``lambda x: classification_accuracy(model, x, labels)``) under noise and gamma changes."""
    config = config or load_robustness_config()
    settings = config.perturbations
    clean = score(images)
    results = [PerturbationResult("image_noise", "image", metric, clean, score(image_noise(images, float(s), seed=seed)),
                                  {"sigma": float(s)}) for s in settings.get("image_noise_sigmas") or []]
    results += [PerturbationResult("contrast_gamma", "image", metric, clean, score(contrast_change(images, float(g))),
                                   {"gamma": float(g)}) for g in settings.get("image_gammas") or []]
    return results
