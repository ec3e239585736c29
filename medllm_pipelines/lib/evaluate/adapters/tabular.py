"""The tabular adapter (spec t2d_risk): the Lightning MLP for type 2 diabetes scored, attacked and explained.

What the engine gets (``outputs``): P(E11) of every train, validation and test row from the registered model (the
``TabularPredictor`` in the training record's ``model_dir``), its per-example log loss (membership inference reads it),
the declared logistic-regression baseline on the same fitted preprocessing and rows, and the fairness groups. Two
family sections:

- ``robustness`` (clause 5.4.3, row S8): FGSM and PGD accuracy-vs-epsilon curves and a score-based black-box
  random-search curve, all in raw clinical units through the fitted preprocessing (``robustness.raw_feature_model``),
  epsilon in training standard deviations per feature; the defences measured before/after (plausibility filtering
  with the quality rules' ranges, a PGD-trained variant, a logit-averaging ensemble); the clinical perturbation suite
  (unit mix-ups, missing values, measurement noise). ``gate_values["attack_accuracy"]`` is PGD accuracy at the
  policy's epsilon.
- ``explanations`` (clause 5.3, row V7): Shapley values per prediction (captum's ``ShapleyValueSampling`` on the
  raw-feature model, averaged over a seeded sample of training rows as baselines: interventional SHAP without the
  ``shap`` package), their global summary (mean |SHAP| per feature) and a deletion-curve faithfulness score.

Everything costly runs on a seeded subsample of the test split whose size is stated in the section summary.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medllm_pipelines.lib.curate.dataset import SplitDataset, join_features_with_splits
from medllm_pipelines.lib.curate.spec import DEMO_SIZE, ModelSpec
from medllm_pipelines.lib.evaluate import robustness as R
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest
from medllm_pipelines.lib.evaluate.membership import binary_log_losses
from medllm_pipelines.lib.evaluate.metrics import fit_logistic_baseline
from medllm_pipelines.lib.evaluate.outputs import (
    SPLITS,
    Figure,
    ModelOutputs,
    ReportSection,
    Table,
    person_groups,
)

LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
ID_COLUMN = "patient_pseudonym"
ATTACK_SPLIT = "test"
ROBUSTNESS_CLAUSE = "5.4.3 (row S8)"
EXPLANATIONS_CLAUSE = "5.3 (row V7, transparency)"


@dataclass(frozen=True)
class Budget:
    """How much of each costly analysis one evaluation runs (demo: ~20 s on 2 cores; full: more rows, more draws).

    ``max_attacked`` also keeps every attacked batch within one forward of ``robustness._outputs`` (512 rows):
    a ``RawFeatureModel`` scores exactly the rows it was built from.
    """

    max_attacked: int
    max_black_box: int
    query_budget: int
    adversarial_epochs: int
    ensemble_extra_members: int
    ensemble_epochs: int
    max_explained: int
    shap_baselines: int
    shap_permutations: int
    deletion_random_orders: int
    table_rows: int = 20


BUDGETS = {
    DEMO_SIZE: Budget(max_attacked=300, max_black_box=100, query_budget=100, adversarial_epochs=30,
                      ensemble_extra_members=2, ensemble_epochs=30, max_explained=150, shap_baselines=16,
                      shap_permutations=20, deletion_random_orders=10),
    "full": Budget(max_attacked=512, max_black_box=300, query_budget=200, adversarial_epochs=60,
                   ensemble_extra_members=4, ensemble_epochs=60, max_explained=512, shap_baselines=50,
                   shap_permutations=50, deletion_random_orders=30),
}


# ----------------------------------------------------------------------------- dataset and model


def dataset(spec: ModelSpec, tables: Mapping[str, pd.DataFrame]) -> SplitDataset:
    """The curated diabetes features joined with their splits exactly as train/diabetes_model reads them
    (``read_split_dataset`` = ``join_features_with_splits``), so the version finds the training record."""
    missing = [name for name in ("dataset", "splits") if name not in tables]
    if missing:
        raise KeyError(f"spec {spec.id}: the tabular adapter needs the tables {missing} (curate features and splits)")
    return join_features_with_splits(tables["dataset"], tables["splits"])


def load_predictor(request: EvaluationRequest) -> Any:
    """The registered model, refused unless it was trained on the curate stage's preprocessing of this dataset version
    (the same check ``runs.evaluate_spec_model`` makes): a model on other preprocessing would be scored on inputs
    it never saw."""
    from medllm_pipelines.lib.train.predictor import TabularPredictor

    record, data = request.record, request.dataset
    if "model_dir" not in record:
        raise ValueError(f"spec {request.spec.id}: the training record names no model_dir")
    recorded_version = record.get("dataset_version")
    if recorded_version is not None and recorded_version != data.version:
        raise ValueError(f"the training record is for dataset version {str(recorded_version)[:16]}, "
                         f"not {data.version[:16]}")
    predictor = TabularPredictor.load(record["model_dir"])
    curated = request.store.fitted_preprocessing(request.spec.id, data.version)
    if predictor.preprocessing.fingerprint() != curated.fingerprint():
        raise ValueError(f"the model in {record['model_dir']} was not trained on the curate stage's "
                         f"preprocessing of dataset version {data.version[:16]}")
    return predictor


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Tiny networks: one thread is faster than fighting over shared cores; the caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _subsample_index(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``limit`` of ``n`` rows, a seeded sample; all when fewer."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _seeded_rows(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most ``limit`` rows, a seeded sample kept in ``example order`` (pseudonym order); all rows when fewer."""
    return frame.iloc[_subsample_index(len(frame), limit, seed)].reset_index(drop=True)


def _labels(frame: pd.DataFrame) -> np.ndarray:
    labels = pd.to_numeric(frame[LABEL_COLUMN], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise ValueError(f"{LABEL_COLUMN!r} must hold only 0 and 1 on every evaluated row")
    return labels.to_numpy(dtype=np.int64)


# ----------------------------------------------------------------------------- outputs


def outputs(request: EvaluationRequest) -> ModelOutputs:
    """Every row of train, validation and test scored by the registered MLP and the logistic baseline, with
    per-example losses, groups, the robustness and explanations sections and the gate's attack accuracy."""
    spec, data = request.spec, request.dataset
    if LABEL_COLUMN not in data.frame.columns or SPLIT_COLUMN not in data.frame.columns:
        raise ValueError(f"spec {spec.id}: the dataset needs the columns {LABEL_COLUMN!r} and {SPLIT_COLUMN!r}")
    predictor = load_predictor(request)
    preprocessing = predictor.preprocessing
    frame = data.frame[data.frame[SPLIT_COLUMN].astype(str).isin(SPLITS)].reset_index(drop=True)
    left_out = len(data.frame) - len(frame)
    if frame[ID_COLUMN].duplicated().any():
        raise ValueError(f"spec {spec.id}: a person appears on more than one row; the dataset has one row per person")
    for split in ("train", ATTACK_SPLIT):
        if not (frame[SPLIT_COLUMN] == split).any():
            raise ValueError(f"spec {spec.id}: the dataset has no {split} rows to evaluate")
    labels = _labels(frame)
    budget = BUDGETS.get(request.size, BUDGETS[DEMO_SIZE])
    with _torch_threads(1):
        probabilities = predictor.predict_proba(frame)
        train = frame[frame[SPLIT_COLUMN] == "train"]
        baseline = fit_logistic_baseline(train.drop(columns=[SPLIT_COLUMN]), preprocessing, LABEL_COLUMN)
        baseline_scores = baseline.predict_proba(frame)
        attacked = _seeded_rows(frame[frame[SPLIT_COLUMN] == ATTACK_SPLIT], budget.max_attacked, request.seed)
        raw: R.RawFeatures | None = None
        reason = ""
        try:  # one probe of the fitted pipeline (slow: pandas per call); every network below reuses its affine map
            raw = R.raw_feature_model(predictor.network, preprocessing,
                                      filled_as_the_model_fills(preprocessing, attacked))
        except ValueError as not_affine:
            reason = f"no attack or explanation in raw clinical units: {not_affine}"
        if raw is None:
            robustness = undefined_section("robustness", "Robustness under attack and clinical perturbations",
                                           ROBUSTNESS_CLAUSE, reason)
            explanations = undefined_section("explanations", "Explanations: SHAP values and deletion faithfulness",
                                             EXPLANATIONS_CLAUSE, reason)
            attack_accuracy = None
        else:
            robustness, attack_accuracy = robustness_section(predictor, train, attacked, raw, request, budget)
            explanations = explanations_section(predictor, train, attacked, raw, request, budget)

    groups = person_groups(frame[ID_COLUMN], request.tables.get("patients"))
    rows = pd.DataFrame({
        "example_id": frame[ID_COLUMN].astype(str).to_numpy(),
        "split": frame[SPLIT_COLUMN].astype(str).to_numpy(),
        "patient_pseudonym": frame[ID_COLUMN].astype(str).to_numpy(),
        "loss": binary_log_losses(labels, probabilities),
    })
    rows = pd.concat([rows, groups.reset_index(drop=True)], axis=1)
    declared = request.policy is not None and request.policy.attack_epsilon is not None
    gate_values: dict[str, float | None] = {"attack_accuracy": attack_accuracy if declared else None}
    limits = [
        "Labels are weak: ICD-10 E11 coded at any institution, not a glucose-tolerance test; a patient with "
        "undiagnosed diabetes counts as negative, so every metric measures agreement with coding.",
        "Attacks move the numeric inputs only (sex stays as recorded) within an L-inf ball in training standard "
        "deviations; they show sensitivity to small coordinated changes, not what an attacker with access to the "
        "records system could do.",
        f"Attacks, defences and explanations ran on {len(attacked)} test rows (seeded subsample where the split is "
        "larger); the black-box attack and the explanations on fewer, as their sections state.",
        "The PGD-trained variant and the ensemble members are retrained here in plain torch on the same "
        "preprocessing; they are comparison models for the defences, not registered models.",
        "Shapley values hold sex fixed at each patient's value and explain P(E11) in probability units against "
        "a sample of training patients; they describe this model, not causal effects of the measurements.",
    ]
    if left_out:
        limits.append(f"{left_out} rows outside train/validation/test (e.g. an external test set) are not scored here.")
    return ModelOutputs(
        task="binary",
        frame=rows,
        y_true=labels,
        model=probabilities,
        model_name=str(request.record.get("registered_model") or spec.id),
        model_version=str(request.record.get("registered_version") or "unregistered"),
        baseline=baseline_scores,
        baseline_name=baseline.describe(),
        sections=(robustness, explanations),
        gate_values=gate_values,
        limits=tuple(limits),
        threshold_note=(f"Accuracy under attack and perturbation uses the model's saved decision threshold "
                        f"{predictor.threshold:g} (P(E11) >= threshold is positive)."),
    )


# ----------------------------------------------------------------------------- robustness


def undefined_section(key: str, title: str, clause: str, reason: str) -> ReportSection:
    """A section that could not be computed: its values are undefined with the reason, never zeros."""
    return ReportSection(key=key, title=title, clause=clause, summary={"undefined": reason}, text=reason)


class StandardisedRawModel(nn.Module):
    """A ``RawFeatureModel`` fed inputs in training standard deviations (``u = raw / scale``).

    A scalar epsilon on ``u`` is the per-feature radius ``eps * scale`` in clinical units, which lets the
    defences of ``robustness`` (whose results carry one scalar epsilon) attack in raw units.
    """

    def __init__(self, raw_model: nn.Module, scale: np.ndarray) -> None:
        super().__init__()
        self.raw_model = raw_model
        self.register_buffer("scale", torch.tensor(np.asarray(scale, dtype=np.float32)))

    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        return self.raw_model(standardised * self.scale)


def _epsilons(request: EvaluationRequest, config: R.RobustnessConfig) -> tuple[list[float], float]:
    """The curve's epsilons (robustness.yaml plus the policy's) and the one the gate reads."""
    gate_eps = (float(request.policy.attack_epsilon) if request.policy is not None
                and request.policy.attack_epsilon is not None else float(config.attacks["gate_epsilon"]))
    values = sorted({float(e) for e in config.attacks["tabular_epsilons"]} | {gate_eps})
    return [e for e in values if e > 0], gate_eps


def _network_like(predictor: Any, seed: int) -> nn.Module:
    """A fresh, seeded network of the registered one's architecture."""
    from medllm_pipelines.lib.train.networks import TabularMLP

    spec = predictor.spec["network"]
    torch.manual_seed(seed)
    return TabularMLP(int(spec["n_inputs"]), tuple(spec["hidden_sizes"]), str(spec["activation"]),
                      float(spec["dropout"]))


def _numeric_mask(preprocessing: Any) -> torch.Tensor:
    """1 on model inputs that come from numeric columns, 0 on one-hot columns: what adversarial training may move."""
    categorical = tuple(f"{c}_" for c in preprocessing.spec.categorical_columns)
    names = [name.split("__", 1)[-1] for name in preprocessing.output_features]
    return torch.tensor([0.0 if name.startswith(categorical) and name not in preprocessing.spec.numeric_columns
                         else 1.0 for name in names], dtype=torch.float32)


def rows_model(raw: R.RawFeatures, network: nn.Module, index: np.ndarray | None = None) -> R.RawFeatureModel:
    """``network`` behind the affine map ``raw`` probed from the fitted pipeline, for ``raw``'s rows (or ``index``
    of them, repeats allowed): any network on the same preprocessing, without probing the pipeline again."""
    offset = raw.model.offset if index is None else raw.model.offset[torch.as_tensor(index, dtype=torch.long)]
    return R.RawFeatureModel(network.eval(), raw.model.jacobian, offset).eval()


def _query_model(raw: R.RawFeatures, network: nn.Module) -> Any:
    """Black-box access: P(E11) for candidate rows whose last column is the row's index in ``raw`` (held fixed by
    the attack: radius 0), the others raw numeric values; probabilities only, no gradient."""
    def predict_proba(candidates: np.ndarray) -> np.ndarray:
        index = np.rint(candidates[:, -1]).astype(np.int64)
        model = rows_model(raw, network, index)
        with torch.no_grad():
            logits = model(torch.tensor(candidates[:, :-1], dtype=torch.float32))
        return torch.sigmoid(logits).numpy().astype(np.float64)
    return predict_proba


def filled_as_the_model_fills(preprocessing: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its missing numeric inputs filled by the fitted pipeline's own steps before scaling (the
    declared missing-value policy, then the spec's imputation), so that the raw-feature model scores each row exactly
    as the deployed predictor does (``raw_feature_model`` alone fills with the imputation value only)."""
    numeric = preprocessing.pipeline.named_steps["columns"].named_transformers_["numeric"]
    names = [name for name, _ in numeric.steps]
    filling = numeric[: names.index("scale")] if "scale" in names else numeric
    columns = list(preprocessing.spec.numeric_columns)
    out = frame.copy()
    if len(out):
        inputs = out[columns].apply(pd.to_numeric).astype(float)
        out[columns] = np.asarray(filling.transform(inputs), dtype=np.float64)
    return out


def raw_values(preprocessing: Any, frame: pd.DataFrame, columns: Sequence[str]) -> torch.Tensor:
    """Numeric inputs in raw units, missing values filled as the model fills them."""
    filled = filled_as_the_model_fills(preprocessing, frame)
    return torch.tensor(filled[list(columns)].to_numpy(dtype=np.float64), dtype=torch.float32)


def _curve_figure(curves: Sequence[R.RobustnessCurve], labels: Sequence[str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(6.0, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    styles = ("-o", "-s", "-^", "--d")
    for curve, label, style in zip(curves, labels, styles, strict=False):
        points = [(e, v) for e, v in curve.points if v is not None]
        axes.plot([e for e, _ in points], [v for _, v in points], style, linewidth=1.8, markersize=4, label=label)
    axes.set_xlabel("epsilon (L-inf radius, training standard deviations per feature)")
    axes.set_ylabel("accuracy on attacked test rows")
    axes.set_ylim(0.0, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    axes.set_title("Accuracy under attack (t2d_risk)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _rounded(value: Any, digits: int = 4) -> Any:
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else round(float(value), digits)
    return value


def robustness_section(predictor: Any, train: pd.DataFrame, test: pd.DataFrame, raw: R.RawFeatures,
                       request: EvaluationRequest, budget: Budget) -> tuple[ReportSection, float | None]:
    """Attacks, defences and clinical perturbations on the (subsampled) test rows; also PGD accuracy at the
    gate's epsilon (None when the policy declares no attack)."""
    started = time.perf_counter()
    config = R.load_robustness_config()
    epsilons, gate_eps = _epsilons(request, config)
    threshold = predictor.threshold
    preprocessing = predictor.preprocessing
    labels = _labels(test)
    y = torch.tensor(labels)
    pgd_settings = config.attacks.get("pgd") or {}
    pgd_options = {"steps": int(pgd_settings.get("steps", 20)),
                   "relative_step_size": float(pgd_settings.get("relative_step_size", 2.5)),
                   "random_start": bool(pgd_settings.get("random_start", True)), "seed": request.seed}

    scale = np.where(np.asarray(raw.scale, dtype=float) > 0, np.asarray(raw.scale, dtype=float), 1.0)
    model = StandardisedRawModel(raw.model, scale).eval()
    standardised = raw.values / torch.tensor(scale, dtype=torch.float32)

    with torch.no_grad():
        reproduced = torch.sigmoid(raw.model(raw.values)).numpy().astype(np.float64)
    raw_difference = float(np.max(np.abs(reproduced - predictor.predict_proba(test))))
    fgsm_curve = R.attack_curve(model, standardised, y, epsilons, attack="fgsm", threshold=threshold)
    pgd_curve = R.attack_curve(model, standardised, y, epsilons, attack="pgd", threshold=threshold, **pgd_options)

    # black box: probabilities only, on raw clinical values (+ the row's index, never moved)
    box = _subsample_index(len(test), budget.max_black_box, request.seed + 1)
    box_inputs = np.column_stack([raw.values.numpy().astype(np.float64)[box], box])
    black_box = R.black_box_curve(
        _query_model(raw, predictor.network), box_inputs, labels[box], epsilons,
        eps_scale=np.append(scale, 0.0), threshold=threshold, query_budget=budget.query_budget,
        initial_fraction=float((config.attacks.get("black_box") or {}).get("initial_fraction", 0.5)),
        seed=request.seed)

    # defences
    from medllm_pipelines.lib.quality.cleaning import load_rules

    rules = load_rules()
    plausibility = R.PlausibilityFilter.from_rules(rules, config)
    filtering = []
    for eps in sorted({gate_eps, max(epsilons)}):
        adversarial = R.pgd(model, standardised, y, eps, **pgd_options) * torch.tensor(scale, dtype=torch.float32)
        filtering.append(R.filtering_defence(predictor.predict_proba, raw.to_frame(adversarial, test), labels,
                                             plausibility, clean=test, attack="pgd", eps=eps, threshold=threshold))
    train_inputs = torch.tensor(preprocessing.transform_array(train))
    train_labels = torch.tensor(_labels(train))
    adversarial_settings = config.defences.get("adversarial_training") or {}
    training_eps = float(adversarial_settings.get("eps", gate_eps))
    with torch.random.fork_rng():
        robust_network = R.train_classifier(
            _network_like(predictor, request.seed + 11), train_inputs, train_labels,
            epochs=budget.adversarial_epochs, adversarial_eps=training_eps,
            pgd_steps=int(adversarial_settings.get("pgd_steps", 7)),
            clean_fraction=float(adversarial_settings.get("clean_fraction", 0.5)),
            feature_mask=_numeric_mask(preprocessing), seed=request.seed + 11)
        members = [predictor.network] + [
            R.train_classifier(_network_like(predictor, request.seed + 21 + i), train_inputs, train_labels,
                               epochs=budget.ensemble_epochs, seed=request.seed + 21 + i)
            for i in range(budget.ensemble_extra_members)]

    def standardised_model(network: nn.Module) -> nn.Module:
        return StandardisedRawModel(rows_model(raw, network), scale).eval()

    robust_model = standardised_model(robust_network)
    adversarial_training = R.adversarial_training_defence(model, robust_model, standardised, y, gate_eps,
                                                          threshold=threshold, **pgd_options)
    robust_curve = R.attack_curve(robust_model, standardised, y, epsilons, attack="pgd", threshold=threshold,
                                  **pgd_options)
    perturbations = R.tabular_perturbation_suite(predictor.predict_proba, test, labels, config=config, rules=rules,
                                                 threshold=threshold, plausibility=plausibility, seed=request.seed)
    try:
        ensemble = R.ensemble_defence([standardised_model(m) for m in members], standardised, y, gate_eps,
                                      threshold=threshold, **pgd_options)
    finally:  # ensemble_defence's LogitAverage is built in training mode and hands that mode back to its members
        for member in members:
            member.eval()

    curves = (fgsm_curve, pgd_curve, black_box, robust_curve)
    names = ("FGSM (white box)", "PGD (white box)", f"random search (black box, {budget.query_budget} queries)",
             "PGD on the PGD-trained variant")
    curve_rows = tuple(
        (eps, *(_rounded(curve.value_at(eps)) for curve in curves)) for eps in [0.0, *epsilons])
    defences = [*filtering, adversarial_training, ensemble]
    defence_rows = tuple((d.defence, d.attack, _rounded(d.eps), _rounded(d.before), _rounded(d.after),
                          _defence_note(d)) for d in defences)
    perturbation_rows = tuple((p.perturbation, p.target, _perturbation_setting(p), _rounded(p.clean),
                               _rounded(p.perturbed), _rounded(p.change), _rounded(p.details.get("rejected_share")))
                              for p in perturbations)
    attack_accuracy = pgd_curve.value_at(gate_eps)
    summary = {
        "n_attacked": len(test),
        "n_black_box": len(box),
        "epsilon_units": "training standard deviation per numeric feature (L-inf), in raw clinical units",
        "epsilons": epsilons,
        "gate_epsilon": gate_eps,
        "clean_accuracy": pgd_curve.clean,
        "fgsm_accuracy_at_gate_epsilon": fgsm_curve.value_at(gate_eps),
        "pgd_accuracy_at_gate_epsilon": attack_accuracy,
        "black_box_accuracy_at_gate_epsilon": black_box.value_at(gate_eps),
        "black_box_query_budget": budget.query_budget,
        "pgd_steps": pgd_options["steps"],
        "adversarially_trained_pgd_accuracy_at_gate_epsilon": adversarial_training.after,
        "adversarially_trained_clean_accuracy": adversarial_training.details["clean_accuracy_adversarially_trained"],
        "ensemble_pgd_accuracy_at_gate_epsilon": ensemble.after,
        "plausibility_rejected_share_at_max_epsilon": filtering[-1].details.get("rejected_share"),
        "adversarial_training_epochs": budget.adversarial_epochs,
        "missing_values_filled_before_attack": int(test[raw.columns].isna().sum().sum()),
        "raw_model_max_difference_from_predictor": raw_difference,
        "robustness_config_version": config.version,
        "plausibility_ranges": plausibility.version,
        "seconds": round(time.perf_counter() - started, 2),
    }
    text = (
        f"White-box FGSM and PGD ({pgd_options['steps']} steps, random start; Goodfellow et al. 2015, Madry et al. "
        "2018) and a score-based black-box random search over the vertices of the L-inf ball (Square Attack scheme, "
        "Andriushchenko et al. 2020, seeing P(E11) only) move the numeric inputs in "
        "clinical units through the fitted preprocessing; epsilon is in training standard deviations per feature. "
        f"Run on {len(test)} test rows ({len(box)} for the black-box attack), seeded. Defences, each before/after: "
        "the quality rules' plausibility ranges reject out-of-range inputs; a PGD-trained variant "
        f"({budget.adversarial_epochs} epochs, eps {training_eps:g}); a logit-averaging ensemble of the registered "
        f"model and {budget.ensemble_extra_members} retrained members (before: mean member accuracy under PGD; after: "
        "the ensemble under PGD on itself). The clinical perturbation suite gives the accuracy under unit mix-ups "
        "(the value in the other unit's number, with the share the plausibility filter would reject), each input "
        "missing in turn (imputed as the fitted preprocessing does) and measurement noise at multiples of declared CVs."
    )
    section = ReportSection(
        key="robustness", title="Robustness under attack and clinical perturbations", clause=ROBUSTNESS_CLAUSE,
        summary=summary,
        tables=(
            Table("Accuracy against epsilon", ("epsilon", *names), curve_rows),
            Table("Defences (accuracy before / after)", ("defence", "attack", "epsilon", "before", "after", "note"),
                  defence_rows),
            Table("Clinical perturbations (accuracy)", ("perturbation", "input", "setting", "clean", "perturbed",
                                                        "change", "rejected by plausibility filter"),
                  perturbation_rows),
        ),
        figures=(Figure("Accuracy against epsilon", _curve_figure(curves, names),
                        f"Test rows (n={len(test)}); epsilon 0 is clean accuracy; black box on n={len(box)}."),),
        text=text,
    )
    return section, attack_accuracy


def _defence_note(result: R.DefenceResult) -> str:
    details = result.details
    if result.defence == "plausibility_filter":
        note = f"rejected {details.get('n_rejected')} of {details.get('n_inputs')} attacked inputs"
        if details.get("clean_rejected_share") is not None:
            note += f"; clean inputs rejected {details['clean_rejected_share']:.1%}"
        return note + (f"; {details['after_undefined']}" if "after_undefined" in details else "")
    if result.defence == "adversarial_training":
        return (f"clean accuracy {details['clean_accuracy_standard']:.3f} -> "
                f"{details['clean_accuracy_adversarially_trained']:.3f}")
    return (f"{details.get('n_members')} members; transfer from member 0: "
            f"{details.get('ensemble_accuracy_transfer_from_member_0', float('nan')):.3f}; "
            f"clean ensemble {details.get('clean_accuracy_ensemble', float('nan')):.3f}")


def _perturbation_setting(result: R.PerturbationResult) -> str:
    if result.perturbation == "unit_mixup":
        return f"given in {result.details.get('given_in')} (expected {result.details.get('canonical_unit')})"
    if result.perturbation == "measurement_noise":
        return f"{result.details.get('cv_multiplier'):g} x declared CV"
    return "imputed"


# ----------------------------------------------------------------------------- explanations


class _Probability(nn.Module):
    """P(E11) from a raw-feature model's logit: SHAP values in probability units."""

    def __init__(self, raw_model: nn.Module) -> None:
        super().__init__()
        self.raw_model = raw_model

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        logits = self.raw_model(raw)
        return torch.sigmoid(logits[:, 0] if logits.ndim == 2 else logits)


def shapley_values(raw: R.RawFeatures, network: nn.Module, index: np.ndarray, background: torch.Tensor, *,
                   permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interventional Shapley values of P(E11) for rows ``index`` of ``raw``, per numeric input, averaged over the
    ``background`` rows (raw values, missing ones filled as the model fills them).

    captum's ``ShapleyValueSampling`` (permutation sampling: Castro, Gomez & Tejada 2009; Strumbelj & Kononenko
    2010) runs once on every (row, background row) pair: the rows are repeated per background row, each pair keeping
    its row's categorical inputs (the row's offset), so one call attributes them all. Each permutation's
    contributions telescope, so per row the values sum exactly to P(x) - mean_b P(x with b's values).
    Returns (values (n, k), P(x) (n,), mean prediction at the background values (n,)).
    """
    from captum.attr import ShapleyValueSampling

    index = np.asarray(index, dtype=np.int64)
    n, k = len(index), len(background)
    if n == 0 or k == 0:
        raise ValueError("Shapley values need rows to explain and background rows")
    repeated = np.tile(index, k)  # pair j * n + i: row index[i] with background row j
    values = raw.values[torch.as_tensor(repeated)]
    baselines = background.repeat_interleave(n, dim=0)
    probability = _Probability(rows_model(raw, network, repeated)).eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        attributions = ShapleyValueSampling(probability).attribute(
            values, baselines=baselines, n_samples=permutations, perturbations_per_eval=1, show_progress=False)
    with torch.no_grad():
        explained = probability(values).numpy().astype(np.float64)
        at_background = probability(baselines).numpy().astype(np.float64)
    shap = attributions.detach().numpy().astype(np.float64).reshape(k, n, -1).mean(axis=0)
    return shap, explained[:n], at_background.reshape(k, n).mean(axis=0)


def deletion_curves(raw: R.RawFeatures, network: nn.Module, index: np.ndarray, attributions: np.ndarray,
                    replacement: np.ndarray, *, random_orders: int, seed: int) -> dict[str, Any]:
    """Deletion-curve faithfulness: numeric inputs replaced, most |attributed| first, by ``replacement`` (the
    training median, the fitted imputation value: the model's "not measured"), against random deletion orders.

    Curve: mean over rows of |P(x with the first k inputs deleted) - P(x)|, k = 0..d; its area on k/d in [0, 1]
    (trapezoid). Faithfulness = area(attribution order) - mean area(random orders): positive when deleting what the
    explanation ranks first moves the prediction sooner than chance; about 0 for explanations unrelated to the model.
    """
    index = np.asarray(index, dtype=np.int64)
    values = raw.values.numpy().astype(np.float64)[index]
    probability = _Probability(rows_model(raw, network, index)).eval()
    n, d = values.shape
    if attributions.shape != (n, d):
        raise ValueError(f"attributions must have shape {(n, d)}, got {attributions.shape}")

    def curve(orders: np.ndarray) -> np.ndarray:
        current = values.copy()
        steps = [np.zeros(n)]
        with torch.no_grad():
            clean = probability(torch.tensor(current, dtype=torch.float32)).numpy()
            for step in range(d):
                column = orders[:, step]
                current[np.arange(n), column] = replacement[column]
                moved = probability(torch.tensor(current, dtype=torch.float32)).numpy()
                steps.append(np.abs(moved - clean))
        return np.stack(steps, axis=1).mean(axis=0)

    def area(points: np.ndarray) -> float:
        return float(np.sum((points[1:] + points[:-1]) / 2.0) / (len(points) - 1))

    ranked = np.argsort(-np.abs(attributions), axis=1, kind="stable")
    rng = np.random.default_rng(seed)
    attributed = curve(ranked)
    random_curves = [curve(np.stack([rng.permutation(d) for _ in range(n)])) for _ in range(random_orders)]
    random_area = float(np.mean([area(c) for c in random_curves]))
    return {"attribution_curve": attributed, "random_curve": np.mean(random_curves, axis=0),
            "attribution_area": area(attributed), "random_area": random_area,
            "faithfulness": area(attributed) - random_area, "n_rows": n, "n_features": d,
            "random_orders": random_orders}


def _bar_figure(columns: Sequence[str], importance: np.ndarray) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    order = np.argsort(importance)
    figure = MplFigure(figsize=(6.0, 0.45 * len(columns) + 1.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.barh([columns[i] for i in order], importance[order], color="#1f5fbf")
    axes.set_xlabel("mean |SHAP value| (change in P(E11))")
    axes.set_title("Global importance (t2d_risk, test rows)")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def explanations_section(predictor: Any, train: pd.DataFrame, test: pd.DataFrame, raw: R.RawFeatures,
                         request: EvaluationRequest, budget: Budget) -> ReportSection:
    """SHAP values per prediction on test rows, the global mean |SHAP| per input, deletion-curve faithfulness."""
    started = time.perf_counter()
    index = _subsample_index(len(test), budget.max_explained, request.seed + 2)
    explained = test.iloc[index].reset_index(drop=True)
    background = _seeded_rows(train, budget.shap_baselines, request.seed + 3)
    network, preprocessing, columns = predictor.network, predictor.preprocessing, raw.columns
    shap, probability, expected = shapley_values(raw, network, index, raw_values(preprocessing, background, columns),
                                                 permutations=budget.shap_permutations, seed=request.seed)
    additivity = float(np.max(np.abs(shap.sum(axis=1) - (probability - expected))))
    importance = np.abs(shap).mean(axis=0)
    imputation = preprocessing.describe()["imputation_values"]
    deletion = deletion_curves(raw, network, index, shap, np.array([imputation[c] for c in columns], dtype=np.float64),
                               random_orders=budget.deletion_random_orders, seed=request.seed)
    selected = preprocessing.describe().get("feature_selection", {}).get("selected")
    order = np.argsort(-importance, kind="stable")
    global_rows = tuple((columns[i], _rounded(importance[i], 5), _rounded(shap[:, i].mean(), 5)) for i in order)
    first = np.argsort(explained[ID_COLUMN].astype(str).to_numpy(), kind="stable")[:budget.table_rows]
    per_prediction = tuple((str(explained[ID_COLUMN].iloc[i]), _rounded(probability[i]),
                            *(_rounded(v) for v in shap[i])) for i in first)
    deletion_rows = tuple((k, _rounded(float(a)), _rounded(float(r)))
                          for k, (a, r) in enumerate(zip(deletion["attribution_curve"], deletion["random_curve"],
                                                         strict=True)))
    summary = {
        "method": "captum ShapleyValueSampling (interventional SHAP on the raw-feature model); no shap package",
        "n_explained": len(explained),
        "n_background": len(background),
        "permutations": budget.shap_permutations,
        "expected_value": float(expected.mean()),
        "max_additivity_error": additivity,
        "global_importance": {columns[i]: float(importance[i]) for i in order},
        "top_feature": columns[int(order[0])],
        "model_inputs_after_selection": selected,
        "deletion_faithfulness": deletion["faithfulness"],
        "deletion_area_attribution": deletion["attribution_area"],
        "deletion_area_random": deletion["random_area"],
        "deletion_random_orders": deletion["random_orders"],
        "deletion_replacement": f"fitted imputation value (training {preprocessing.spec.imputation})",
        "seconds": round(time.perf_counter() - started, 2),
    }
    text = (
        "Shapley values of P(E11) per prediction, computed with captum's ShapleyValueSampling (permutation sampling, "
        f"{budget.shap_permutations} permutations) on the model composed with its fitted preprocessing, so that each "
        "value is the share of one clinical input in raw units. The background is a seeded sample of "
        f"{len(background)} training patients (interventional SHAP: values averaged over them); per patient the values "
        "sum to P(x) minus the mean prediction with background values (additivity error in the summary). We do not "
        "add the `shap` package: captum, already a dependency, computes the same quantity. Sex is held "
        "at each patient's value; inputs that the fitted feature selection dropped get exactly 0. Deletion-curve "
        f"faithfulness: inputs are replaced by the fitted imputation value (training {preprocessing.spec.imputation}) "
        "in order of |SHAP| and the mean absolute change of "
        "P(E11) is tracked; the score is the area under that curve minus the area for random orders (higher: the "
        f"explanations point at what the model uses). {len(explained)} test rows (seeded subsample where larger); "
        f"the table lists the first {len(per_prediction)} by pseudonym."
    )
    return ReportSection(
        key="explanations", title="Explanations: SHAP values and deletion faithfulness", clause=EXPLANATIONS_CLAUSE,
        summary=summary,
        tables=(
            Table("Global importance", ("input", "mean |SHAP|", "mean SHAP"), global_rows),
            Table(f"SHAP values per prediction (first {len(per_prediction)} test rows by pseudonym)",
                  ("example_id", "P(E11)", *columns), per_prediction),
            Table("Deletion curve (mean |change of P(E11)| after k deletions)",
                  ("inputs deleted", "SHAP order", "random order"), deletion_rows),
        ),
        figures=(Figure("Global SHAP importance", _bar_figure(columns, importance),
                        f"Mean |SHAP| over {len(explained)} test rows, background {len(background)} training rows."),),
        text=text,
    )
