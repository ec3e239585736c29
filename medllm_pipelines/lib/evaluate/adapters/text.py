"""The text family's evaluation adapter (issue 12): the triage classifier and the clinical entity tagger.

Both specs (``triage``: department of a pre-consultation dialogue; ``clinical_entities``: symptom, disease
and drug spans in it) train on the de-identified dialogues joined with their splits on ``text_id``
(``defs/train/spec_assets.py``); `dataset` rebuilds that join so that its version finds the training record.
`outputs` loads the model folder the record names with the family's own loaders (``TextClassifierPredictor``,
``EntityTaggerPredictor``: weights and tokenizer checked against their recorded SHA-256) and scores every row
of train, validation and test:

- triage (task ``multiclass``): department probabilities; loss ``-log p[true department]``; baseline the
  training split's department frequencies (the spec's ``majority_class``: its most frequent department ranks
  first, as in the training's own majority-class figures); sections: integrated-gradients explanations with a
  deletion-curve faithfulness score (V7), and the hand-written held-out dialogues (V6).
- clinical_entities (task ``spans``): per text the exact character-span true positives, false positives and
  false negatives against the gold (brat-derived, realigned) spans; loss the mean token cross-entropy; baseline
  the training's dictionary tagger (validation and test rows only: it is built from the training split's own
  strings); section: span F1 per entity type, model and dictionary.

No gradient attack is run on these models: their inputs are discrete tokens, and an epsilon-ball around a token
embedding corresponds to no text a person could write. Membership inference reads the per-example loss.
Nothing here writes a dialogue's text into the report: the explanations show vocabulary tokens only, and the
tokenizer only holds words that at least two persons used (``lib/train/text/tokenizer.py``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medllm_pipelines.lib.curate.dataset import SplitDataset, join_features_with_splits
from medllm_pipelines.lib.curate.spec import DEMO_SIZE, ModelSpec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest
from medllm_pipelines.lib.evaluate.intervals import bootstrap_intervals
from medllm_pipelines.lib.evaluate.membership import multiclass_log_losses
from medllm_pipelines.lib.evaluate.outputs import SPLITS, Figure, ModelOutputs, ReportSection, Table, person_groups

ID_COLUMN = "text_id"  # the key of deidentify/dialogues, and of both specs' split tables
TRIAGE_TASK = "multiclass_classification"
ENTITY_TASK = "token_classification"
PREDICT_BATCH = 256
# Explanations (integrated gradients): dialogues explained per size (a seeded sample of the test split), the
# Riemann steps of the path integral, and the dialogues shown one by one in the report.
EXPLAINED_DIALOGUES = {"demo": 40, "full": 200}
IG_STEPS = 16  # enough for completeness: the reported mean |convergence delta| is ~0.004 on the test model
IG_CHUNK = 8
SHOWN_DIALOGUES = 10
TOP_TOKENS = 5
# Deletion curve: the share of a dialogue's tokens replaced by [UNK], most attributed first or in random order.
DELETION_FRACTIONS = tuple(float(f) for f in np.round(np.linspace(0.0, 1.0, 11), 2))
RANDOM_ORDERS = 3
DROP_AT = 0.2
N_BOOT = 1000


# --- dataset -----------------------------------------------------------------------------------------------------


def dataset(spec: ModelSpec, tables: Mapping[str, pd.DataFrame]) -> SplitDataset:
    """The dialogues joined with their splits on ``text_id``, exactly as ``train_text_spec_asset`` joins them."""
    missing = [name for name in ("dataset", "splits") if name not in tables]
    if missing:
        raise KeyError(f"spec {spec.id}: the text adapter needs the tables {missing}")
    for name in ("dataset", "splits"):
        if ID_COLUMN not in tables[name].columns:
            raise ValueError(f"spec {spec.id}: the {name} table has no {ID_COLUMN!r} column")
    return join_features_with_splits(tables["dataset"], tables["splits"], id_column=ID_COLUMN)


# --- outputs -----------------------------------------------------------------------------------------------------


def outputs(request: EvaluationRequest) -> ModelOutputs:
    """The registered text model's outputs on every row of its splits (triage or entity recognition)."""
    task = request.spec.task
    if task == TRIAGE_TASK:
        return triage_outputs(request)
    if task == ENTITY_TASK:
        return entity_outputs(request)
    raise ValueError(f"spec {request.spec.id}: the text adapter evaluates {TRIAGE_TASK} and {ENTITY_TASK}, "
                     f"not {task!r}")


def _model_dir(request: EvaluationRequest) -> Path:
    value = request.record.get("model_dir")
    if not value:
        raise ValueError(f"spec {request.spec.id}: the training record names no model_dir")
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"spec {request.spec.id}: the model folder {path} of the training record is missing")
    return path


def _identity(request: EvaluationRequest) -> tuple[str, str]:
    """Registered name and version; an unregistered model is evaluated under the spec id (version "unregistered")."""
    return (str(request.record.get("registered_model") or request.spec.id),
            str(request.record.get("registered_version") or "unregistered"))


def _check_provenance(request: EvaluationRequest, model_spec: Mapping[str, Any]) -> None:
    """The folder must hold the model trained on this dataset version with the recorded tokenizer."""
    spec_id = request.spec.id
    trained_on = model_spec.get("dataset_version")
    if trained_on and trained_on != request.dataset.version:
        raise ValueError(f"spec {spec_id}: the model was trained on dataset version {str(trained_on)[:16]}, "
                         f"not on the evaluated {request.dataset.version[:16]}")
    recorded = request.record.get("tokenizer_sha256")
    saved = (model_spec.get("sha256") or {}).get("tokenizer")
    if recorded and saved and recorded != saved:
        raise ValueError(f"spec {spec_id}: the model folder's tokenizer differs from the training record's")


def _rows(request: EvaluationRequest, columns: Sequence[str]) -> pd.DataFrame:
    frame = request.dataset.frame
    needed = [ID_COLUMN, "patient_pseudonym", "split", "text", *columns]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"spec {request.spec.id}: the dataset lacks the columns {missing}")
    rows = frame[frame["split"].astype(str).isin(SPLITS)].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"spec {request.spec.id}: the dataset holds no train, validation or test rows")
    return rows


def _frame(rows: pd.DataFrame, losses: np.ndarray, patients: pd.DataFrame | None) -> pd.DataFrame:
    frame = pd.DataFrame({"example_id": rows[ID_COLUMN].astype(str), "split": rows["split"].astype(str),
                          "patient_pseudonym": rows["patient_pseudonym"].astype(str),
                          "loss": np.asarray(losses, dtype=np.float64)})
    groups = person_groups(frame["patient_pseudonym"], patients)
    if "language" in rows.columns:
        frame["language"] = rows["language"].astype(str).to_numpy()
    return pd.concat([frame, groups], axis=1)


def _threads(size: str) -> int:
    """One thread at demo size (2 shared cores, matrices too small to gain from more); torch's default at full."""
    return 1 if size == DEMO_SIZE else 0


def _attack_limits(request: EvaluationRequest) -> tuple[str, ...]:
    base = ("No gradient attack is run on this text model: its inputs are discrete tokens, and an epsilon-ball "
            "around a token embedding corresponds to no dialogue a person could write; membership inference "
            "uses the per-example loss only.",)
    if request.policy is not None and request.policy.attack_epsilon is not None:
        base += (f"The spec declares an attack at epsilon {request.policy.attack_epsilon:g}, which this adapter "
                 "does not run: that criterion is undefined and fails closed.",)
    return base


# --- triage --------------------------------------------------------------------------------------------------------


def length_batches(ids: torch.Tensor, batch_size: int = PREDICT_BATCH) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Row indices and their token ids, batched by length, each batch cut at its longest text.

    Padding is masked out of attention and pooling, so the outputs on the real tokens are those of the full
    padded width (the predictor's), to float rounding; a batch of short texts no longer pays for 96 or 128
    positions. A text with no token keeps one (padding) column.
    """
    from medllm_pipelines.lib.train.text.networks import PAD_ID

    lengths = (ids != PAD_ID).sum(dim=1).numpy()
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield index, ids[torch.as_tensor(index), : max(int(lengths[index].max()), 1)]


def _probabilities(predictor: Any, texts: Sequence[str]) -> np.ndarray:
    """The predictor's class probabilities (softmax of its network on its encoding), in length batches."""
    ids = predictor.encode(list(texts))
    out = np.empty((len(texts), len(predictor.classes)))
    with torch.no_grad():
        for index, batch in length_batches(ids):
            out[index] = torch.softmax(predictor.network(batch), dim=-1).double().numpy()
    return out


def class_frequency_baseline(train_labels: np.ndarray, n_classes: int, n_rows: int) -> np.ndarray:
    """The majority-class baseline as probabilities: the training split's class frequencies on every row.

    Its top class is the most frequent training department (its accuracy is the majority-class accuracy) and its
    ranking is the training's ``majority_class_metrics`` ranking (ties: the lower class index first, by a 1e-9
    nudge that leaves the frequencies as they are to 1e-8).
    """
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("the training split holds no labelled rows: no majority class")
    prior = counts / counts.sum() + np.linspace(0.0, 1e-9, n_classes)[::-1]
    prior /= prior.sum()
    return np.tile(prior, (n_rows, 1))


def triage_outputs(request: EvaluationRequest) -> ModelOutputs:
    """Department probabilities of every row, the class-frequency baseline, explanations and written dialogues."""
    from medllm_pipelines.lib.train.text.data import class_indices
    from medllm_pipelines.lib.train.text.networks import PAD_ID
    from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor
    from medllm_pipelines.lib.train.text.runs import spec_classes
    from medllm_pipelines.lib.train.text.training import cpu_threads

    spec = request.spec
    rows = _rows(request, ("label",))
    predictor = TextClassifierPredictor.load(_model_dir(request))
    _check_provenance(request, predictor.spec)
    classes = predictor.classes
    if classes != spec_classes(spec):
        raise ValueError(f"spec {spec.id}: the model's classes {classes} are not the spec's {spec_classes(spec)}")
    texts = rows["text"].astype(str).tolist()
    empty = int((predictor.encode(texts) == PAD_ID).all(dim=1).sum())
    if empty:
        raise ValueError(f"spec {spec.id}: {empty} dialogues encode to no token; the classifier cannot score them")
    y_true = class_indices(rows["label"].tolist(), classes, "evaluated").numpy()
    with cpu_threads(_threads(request.size)):
        probabilities = _probabilities(predictor, texts)
        losses = multiclass_log_losses(y_true, probabilities)
        is_train = (rows["split"] == "train").to_numpy()
        baseline = class_frequency_baseline(y_true[is_train], len(classes), len(rows))
        test = (rows["split"] == "test").to_numpy()
        explanations = explain_triage(predictor, rows.loc[test, "text"].astype(str).tolist(), y_true[test],
                                      size=request.size, seed=request.seed)
        written = written_dialogue_section(predictor, baseline[0], probabilities[test], y_true[test],
                                           rows.loc[test, "language"] if "language" in rows.columns else None)
    name, version = _identity(request)
    limits = (
        *_attack_limits(request),
        f"Explanations cover {explanations.summary['n_explained']} of {int(test.sum())} test dialogues (a seeded "
        "sample); integrated gradients attribute the predicted department's probability against an all-[UNK] "
        "reference: they show which words the model uses, not which symptoms cause a department.",
        "The dialogues are generated by the synthetic hospital; only the hand-written held-out messages "
        f"({written.summary.get('n_written', 0)}) are text written independently of the generator, too few to "
        "show performance on real patients' words.",
        "The baseline (the training split's department frequencies) ignores the text: beating it shows the model "
        "reads the dialogue, not that it triages as well as intake staff.",
    )
    return ModelOutputs(
        task="multiclass", frame=_frame(rows, losses, request.tables.get("patients")), y_true=y_true,
        model=probabilities, model_name=name, model_version=version, baseline=baseline,
        baseline_name="majority class (training department frequencies)", class_names=tuple(classes),
        sections=(explanations, written), gate_values={}, limits=limits)


def _class_probability(network: torch.nn.Module, ids: torch.Tensor, target: np.ndarray) -> np.ndarray:
    """P(target class) of each row, in length batches, without gradients."""
    out = np.empty(len(ids))
    with torch.no_grad():
        for index, batch in length_batches(ids):
            p = torch.softmax(network(batch), dim=-1)
            out[index] = p[torch.arange(len(p)), torch.as_tensor(target[index])].double().numpy()
    return out


def integrated_gradients(network: torch.nn.Module, ids: torch.Tensor, target: np.ndarray,
                         steps: int = IG_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Per-token attributions of P(target) (captum's LayerIntegratedGradients on the token embedding) and the
    convergence delta of each row (sum of attributions minus P(x) - P(reference); near 0 when the path integral
    is computed accurately). The reference replaces every real token by [UNK], the token the model learnt to
    read past in training (token dropout), and keeps the padding."""
    from captum.attr import LayerIntegratedGradients

    from medllm_pipelines.lib.train.text.networks import PAD_ID
    from medllm_pipelines.lib.train.text.systems import UNK_ID

    network.eval()
    explainer = LayerIntegratedGradients(lambda x: torch.softmax(network(x), dim=-1),
                                         network.encoder.token_embedding)
    attributions, deltas = np.zeros(tuple(ids.shape)), np.zeros(len(ids))
    with torch.enable_grad():
        for index, chunk in length_batches(ids, IG_CHUNK):
            reference = torch.where(chunk != PAD_ID, torch.full_like(chunk, UNK_ID), chunk)
            attribution, delta = explainer.attribute(chunk, baselines=reference, target=torch.as_tensor(target[index]),
                                                     n_steps=steps, return_convergence_delta=True)
            per_token = attribution.sum(dim=-1) * (chunk != PAD_ID)
            attributions[index, : chunk.shape[1]] = per_token.detach().double().numpy()
            deltas[index] = delta.detach().double().numpy()
    return attributions, deltas


def deletion_curves(network: torch.nn.Module, ids: torch.Tensor, target: np.ndarray, attributions: np.ndarray,
                    *, seed: int, fractions: Sequence[float] = DELETION_FRACTIONS,
                    random_orders: int = RANDOM_ORDERS) -> tuple[np.ndarray, np.ndarray]:
    """P(target) as a growing share of each text's tokens is replaced by [UNK]: most attributed first (rows x
    fractions) and in random order (rows x fractions, the mean over ``random_orders`` seeded orders)."""
    from medllm_pipelines.lib.train.text.networks import PAD_ID
    from medllm_pipelines.lib.train.text.systems import UNK_ID

    rng = np.random.default_rng(seed)
    real = (ids != PAD_ID).numpy()
    orders: list[list[np.ndarray]] = [[] for _ in range(1 + random_orders)]
    for row in range(len(ids)):
        positions = np.flatnonzero(real[row])
        orders[0].append(positions[np.argsort(-attributions[row, positions], kind="stable")])
        for r in range(random_orders):
            orders[1 + r].append(rng.permutation(positions))
    curves = []
    for order in orders:
        batch, targets = [], []
        for row, ranked in enumerate(order):
            for fraction in fractions:
                deleted = ids[row].clone()
                deleted[ranked[: int(round(fraction * len(ranked)))]] = UNK_ID
                batch.append(deleted)
                targets.append(target[row])
        probabilities = _class_probability(network, torch.stack(batch), np.asarray(targets))
        curves.append(probabilities.reshape(len(ids), len(fractions)))
    return curves[0], np.mean(curves[1:], axis=0)


def _area(fractions: Sequence[float], curve: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row's curve over the deleted share (0..1)."""
    x = np.asarray(fractions, dtype=np.float64)
    return ((curve[..., 1:] + curve[..., :-1]) / 2.0 * np.diff(x)).sum(axis=-1)


def _deletion_figure(fractions: Sequence[float], attributed: np.ndarray, random: np.ndarray) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(4.5, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(fractions, attributed, marker="o", label="most attributed first")
    axes.plot(fractions, random, marker="s", label="random order")
    axes.set_xlabel("share of tokens replaced by [UNK]")
    axes.set_ylabel("P(predicted department)")
    axes.set_ylim(0.0, 1.0)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _token(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.id_to_token(int(token_id)))


def explain_triage(predictor: Any, texts: Sequence[str], y_true: np.ndarray, *, size: str = DEMO_SIZE,
                   seed: int = 0) -> ReportSection:
    """Integrated gradients on a seeded sample of the test dialogues: top tokens per dialogue, the most attributed
    tokens per predicted department, and the deletion-curve faithfulness score (attributed order vs random)."""
    from medllm_pipelines.lib.train.text.networks import PAD_ID

    n_test = len(texts)
    budget = EXPLAINED_DIALOGUES.get(size, EXPLAINED_DIALOGUES[DEMO_SIZE])
    key, title, clause = "explanations", "Explanations: integrated gradients and deletion curve", \
        "V7 report, issue 12 item 8 (explanations with a faithfulness score)"
    if n_test == 0:
        return ReportSection(key, title, clause, summary={"n_explained": 0, "n_test": 0,
                                                          "reason": "the test split holds no dialogue"},
                             text="Undefined: the test split holds no dialogue to explain.")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_test, size=min(budget, n_test), replace=False))
    network, classes = predictor.network, predictor.classes
    ids = predictor.encode([texts[i] for i in chosen])
    ids = ids[:, : max(int((ids != PAD_ID).sum(dim=1).max()), 1)]  # padding past the longest text changes nothing
    probabilities = _probabilities(predictor, [texts[i] for i in chosen])
    predicted = probabilities.argmax(axis=1)
    attributions, deltas = integrated_gradients(network, ids, predicted)
    attributed, random = deletion_curves(network, ids, predicted, attributions, seed=seed)
    area_attributed, area_random = _area(DELETION_FRACTIONS, attributed), _area(DELETION_FRACTIONS, random)
    difference = area_random - area_attributed
    interval = bootstrap_intervals(lambda d: float(np.mean(d)), difference, n_boot=N_BOOT, seed=seed,
                                   methods=("percentile",))["value"]
    at = int(np.argmin(np.abs(np.asarray(DELETION_FRACTIONS) - DROP_AT)))
    p0 = attributed[:, 0]

    tokenizer = predictor.tokenizer
    ids_np = ids.numpy()
    shown = []
    per_department: dict[int, dict[int, list[float]]] = {}
    for row in range(len(ids_np)):
        real = np.flatnonzero(ids_np[row] != PAD_ID)
        top = real[np.argsort(-attributions[row, real], kind="stable")][:TOP_TOKENS]
        if row < SHOWN_DIALOGUES:
            shown.append((row + 1, classes[int(y_true[chosen[row]])], classes[int(predicted[row])],
                          round(float(probabilities[row, predicted[row]]), 3),
                          ", ".join(f"{_token(tokenizer, ids_np[row, j])} ({attributions[row, j]:+.3f})" for j in top)))
        tokens = per_department.setdefault(int(predicted[row]), {})
        for j in real:
            tokens.setdefault(int(ids_np[row, j]), []).append(float(attributions[row, j]))
    global_rows = []
    for department in sorted(per_department):
        tokens = per_department[department]
        ranked = sorted(tokens, key=lambda t: (-sum(tokens[t]), t))[:TOP_TOKENS]
        n_dialogues = int(np.sum(predicted == department))
        global_rows.append((classes[department], n_dialogues,
                            ", ".join(f"{_token(tokenizer, t)} ({sum(tokens[t]):+.3f}, n={len(tokens[t])})"
                                      for t in ranked)))
    curve_rows = tuple((float(f), round(float(a), 4), round(float(r), 4))
                       for f, a, r in zip(DELETION_FRACTIONS, attributed.mean(axis=0), random.mean(axis=0),
                                          strict=True))
    low, high = interval.percentile if interval.percentile is not None else (None, None)
    summary = {
        "method": "integrated gradients (captum LayerIntegratedGradients on the token embedding)",
        "target": "probability of the predicted department",
        "reference": "[UNK] in place of every real token, padding kept",
        "n_steps": IG_STEPS,
        "n_explained": int(len(chosen)),
        "n_test": int(n_test),
        "sample": f"seeded uniform sample of the test split (seed {seed})",
        "mean_abs_convergence_delta": float(np.mean(np.abs(deltas))),
        "deletion_area_attributed": float(area_attributed.mean()),
        "deletion_area_random": float(area_random.mean()),
        "faithfulness_area_difference": float(difference.mean()),
        "faithfulness_interval_95": [low, high],
        f"probability_drop_at_{int(DROP_AT * 100)}pct_attributed": float(np.mean(p0 - attributed[:, at])),
        f"probability_drop_at_{int(DROP_AT * 100)}pct_random": float(np.mean(p0 - random[:, at])),
        "random_orders": RANDOM_ORDERS,
    }
    text = (f"Integrated gradients ({IG_STEPS} steps) attribute the predicted department's probability to each "
            f"token of {len(chosen)} of {n_test} test dialogues (seeded sample). Faithfulness: the tokens are "
            "replaced by [UNK] most attributed first and, for comparison, in random order "
            f"({RANDOM_ORDERS} seeded orders); the score is the area between the two curves of the predicted "
            "department's probability over the share deleted (area under the random curve minus area under the "
            "attributed one: above 0 when the attributions find the words the model relies on). Tokens are "
            "entries of the tokenizer's vocabulary (words at least two persons used, from de-identified text); "
            "no dialogue text is shown.")
    return ReportSection(
        key, title, clause, summary=summary,
        tables=(
            Table(f"Top {TOP_TOKENS} tokens of {len(shown)} explained test dialogues (attribution to the predicted "
                  "department's probability)",
                  ("#", "true department", "predicted", "probability", "top tokens (attribution)"), tuple(shown)),
            Table("Most attributed tokens per predicted department (summed attribution, occurrences)",
                  ("predicted department", "dialogues", "tokens"), tuple(global_rows)),
            Table("Deletion curve: mean probability of the predicted department",
                  ("share of tokens deleted", "most attributed first", "random order"), curve_rows),
        ),
        figures=(Figure("Deletion curve", _deletion_figure(DELETION_FRACTIONS, attributed.mean(axis=0),
                                                            random.mean(axis=0)),
                        "Probability of the predicted department as tokens are replaced by [UNK]."),),
        text=text)


def _hits(probabilities: np.ndarray, y_true: np.ndarray, k: int) -> np.ndarray:
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return (ranked == np.asarray(y_true)[:, None]).any(axis=1)


def written_dialogue_section(predictor: Any, prior: np.ndarray, test_probabilities: np.ndarray,
                             test_truth: np.ndarray, test_languages: pd.Series | None) -> ReportSection:
    """Accuracy on the hand-written held-out messages (lib/train/text/heldout_triage.yaml), next to the synthetic
    test split and the class-frequency baseline: text written independently of the dialogue generator.

    The accuracies are those of the training's ``written_dialogue_metrics`` (the same stable ranking of the same
    probabilities), here with their counts, top-3 per subset and the baseline beside them."""
    from medllm_pipelines.lib.train.text.runs import load_written_dialogues

    classes = predictor.classes
    written = load_written_dialogues()
    key, title = "real_scenario_validation", "Real-scenario validation: hand-written dialogues"
    clause = "V6 independent and real-scenario validation"
    known = (written[written["label"].isin(classes)] if not written.empty else written).reset_index(drop=True)
    if known.empty:
        return ReportSection(key, title, clause, summary={"n_written": 0, "reason": "no hand-written dialogue "
                                                          "of the model's departments"},
                             text="Undefined: no hand-written dialogue names one of the model's departments.")
    probabilities = _probabilities(predictor, known["text"].astype(str).tolist())
    truth = np.array([classes.index(label) for label in known["label"]])

    def row(data: str, subset: str, p: np.ndarray, y: np.ndarray) -> tuple[Any, ...]:
        prior_rows = np.tile(prior, (len(y), 1))
        return (data, subset, int(len(y)), round(float(_hits(p, y, 1).mean()), 4),
                round(float(_hits(p, y, 3).mean()), 4), round(float(_hits(prior_rows, y, 1).mean()), 4))

    table_rows = []
    if len(test_truth):
        table_rows.append(row("synthetic test split", "all", test_probabilities, test_truth))
        if test_languages is not None:
            languages = test_languages.astype(str).to_numpy()
            for language in sorted(set(languages)):
                where = languages == language
                table_rows.append(row("synthetic test split", language, test_probabilities[where], test_truth[where]))
    table_rows.append(row("hand-written", "all", probabilities, truth))
    written_languages = known["language"].astype(str).to_numpy()
    for language in sorted(set(written_languages)):
        where = written_languages == language
        table_rows.append(row("hand-written", language, probabilities[where], truth[where]))
    sets = (known["set"].fillna("v1") if "set" in known.columns else pd.Series("v1", index=known.index)).astype(str)
    for name in sorted(set(sets)):
        where = (sets == name).to_numpy()
        table_rows.append(row("hand-written", f"set {name}", probabilities[where], truth[where]))
    written_accuracy = float(_hits(probabilities, truth, 1).mean())
    test_accuracy = float(_hits(test_probabilities, test_truth, 1).mean()) if len(test_truth) else None
    prior_rows = np.tile(prior, (len(truth), 1))
    summary = {
        "n_written": int(len(known)),
        "written_set_version": written.attrs.get("version", ""),
        "written_accuracy": written_accuracy,
        "written_top3_accuracy": float(_hits(probabilities, truth, 3).mean()),
        "baseline_written_accuracy": float(_hits(prior_rows, truth, 1).mean()),
        "baseline_written_top3_accuracy": float(_hits(prior_rows, truth, 3).mean()),
        "synthetic_test_accuracy": test_accuracy,
        "drop_synthetic_to_written": None if test_accuracy is None else test_accuracy - written_accuracy,
    }
    text = (f"{len(known)} pre-consultation messages written by hand, independently of the dialogue generator "
            "(other words, colloquial and clinical phrasing), never trained on. A model that learnt the "
            "generator's sentences rather than the symptoms scores well on the synthetic test split and low "
            "here: the drop from one to the other is the measure.")
    return ReportSection(key, title, clause, summary=summary, tables=(
        Table("Accuracy on the synthetic test split and on the hand-written dialogues",
              ("data", "subset", "n", "top-1 accuracy", "top-3 accuracy", "majority class top-1 accuracy"),
              tuple(table_rows)),), text=text)


# --- clinical entities ---------------------------------------------------------------------------------------------


def span_counts(gold: Sequence[tuple[int, int, str]], predicted: Sequence[tuple[int, int, str]],
                entity_types: Sequence[str]) -> tuple[int, int, int]:
    """Exact-match (start, end, type) true positives, false positives and false negatives of one text, over the
    spec's entity types: the per-text counts whose sums give ``spans.span_metrics``' micro figures."""
    kinds = set(entity_types)
    g = {tuple(s) for s in gold if s[2] in kinds}
    p = {tuple(s) for s in predicted if s[2] in kinds}
    return len(g & p), len(p - g), len(g - p)


def tag_texts(predictor: Any, texts: Sequence[str], gold: Sequence[Sequence[tuple[int, int, str]]]
              ) -> tuple[list[list[tuple[int, int, str]]], np.ndarray]:
    """The tagger's character spans of each text (``EntityTaggerPredictor.entities``: argmax tags decoded through
    the tokens' offsets) and its mean token cross-entropy against the gold BIO tags (padding ignored, NaN for a
    text with no token), from one forward pass in length batches."""
    from medllm_pipelines.lib.train.text.entities import IGNORE, encode_tagged
    from medllm_pipelines.lib.train.text.spans import char_spans

    labels = predictor.spec["labels"]
    ids, tags, offsets = encode_tagged(predictor.tokenizer, texts, gold, labels,
                                       int(predictor.spec["network"]["max_length"]))
    spans: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    losses = np.full(len(texts), np.nan)
    with torch.no_grad():
        for index, batch in length_batches(ids):
            logits = predictor.network(batch)
            target = tags[torch.as_tensor(index), : logits.shape[1]]
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE,
                                                          reduction="none")
            kept = (target != IGNORE).sum(dim=1)
            mean = (per_token.sum(dim=1) / kept.clamp(min=1)).double().numpy()
            predicted = logits.argmax(dim=-1).numpy()
            for row, i in enumerate(index):
                where = offsets[i]
                if where:
                    losses[i] = mean[row]
                    spans[i] = char_spans([labels[int(t)] for t in predicted[row, : len(where)]], where)
    return spans, losses


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    """Precision, recall, F1; None where undefined (nothing predicted, nothing to find)."""
    tp, fp, fn = int(tp), int(fp), int(fn)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    return precision, recall, f1


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def entity_outputs(request: EvaluationRequest) -> ModelOutputs:
    """Per text exact-span tp/fp/fn of the tagger and of the dictionary baseline, the mean token loss, and span
    F1 per entity type."""
    from medllm_pipelines.lib.train.text.entities import EntityTaggerPredictor, evaluate_tagger, parse_spans
    from medllm_pipelines.lib.train.text.entity_runs import entity_types as spec_entity_types
    from medllm_pipelines.lib.train.text.spans import DictionaryTagger
    from medllm_pipelines.lib.train.text.training import cpu_threads

    spec = request.spec
    rows = _rows(request, ("entities_json",))
    predictor = EntityTaggerPredictor.load(_model_dir(request))
    _check_provenance(request, predictor.spec)
    types = list(predictor.spec["entity_types"])
    if types != spec_entity_types(spec):
        raise ValueError(f"spec {spec.id}: the model's entity types {types} are not the spec's "
                         f"{spec_entity_types(spec)}")
    texts = rows["text"].astype(str).tolist()
    gold = [parse_spans(v) for v in rows["entities_json"]]
    split = rows["split"].astype(str).to_numpy()
    with cpu_threads(_threads(request.size)):
        predicted, losses = tag_texts(predictor, texts, gold)
        train = split == "train"  # the training's dictionary: the training split's own strings
        dictionary = DictionaryTagger([t for t, keep in zip(texts, train, strict=True) if keep],
                                      [g for g, keep in zip(gold, train, strict=True) if keep])
        labels, max_length = predictor.spec["labels"], int(predictor.spec["network"]["max_length"])
        token_model, token_baseline = evaluate_tagger(predictor.network, dictionary, predictor.tokenizer,
                                                      rows[split == "test"], labels, types, max_length)
    model = np.array([span_counts(g, p, types) for g, p in zip(gold, predicted, strict=True)], dtype=np.float64)
    baseline = np.full_like(model, np.nan)
    baseline_spans = {int(i): dictionary.tag(texts[i]) for i in np.flatnonzero(~train)}
    for i, spans in baseline_spans.items():
        baseline[i] = span_counts(gold[i], spans, types)
    section = entity_type_section(gold, predicted, baseline_spans, test=split == "test", types=types,
                                  languages=rows.get("language"),
                                  token_model=token_model, token_baseline=token_baseline,
                                  max_length=max_length, dictionary_entries=len(dictionary))
    name, version = _identity(request)
    limits = (
        *_attack_limits(request),
        "Spans count only on an exact match of start, end and type against the gold spans realigned to the "
        "de-identified text; a span the tagger marks one word too wide or too narrow counts as both a false "
        "positive and a false negative. Gold spans beyond the encoder's maximum length are counted as missed.",
        "The dictionary baseline is scored on validation and test rows only: it is built from the training "
        "split's own entity strings, so on training rows it would read back its own lookup table.",
        "The annotated dialogues are synthetic and few; per-type F1 on a small test split is noisy, and "
        "performance on real patients' phrasing is not shown here.",
    )
    return ModelOutputs(
        task="spans", frame=_frame(rows, losses, request.tables.get("patients")), y_true=np.zeros(len(rows)),
        model=model, model_name=name, model_version=version, baseline=baseline,
        baseline_name="dictionary (longest match of the training split's entity strings)",
        sections=(section,), gate_values={}, limits=limits)


def entity_type_section(gold: Sequence[Sequence[tuple[int, int, str]]],
                        predicted: Sequence[Sequence[tuple[int, int, str]]],
                        baseline_spans: Mapping[int, Sequence[tuple[int, int, str]]], *, test: np.ndarray,
                        types: Sequence[str], languages: pd.Series | None, token_model: Mapping[str, float],
                        token_baseline: Mapping[str, float], max_length: int,
                        dictionary_entries: int) -> ReportSection:
    """Exact character-span precision, recall and F1 per entity type on the test split, model and dictionary,
    with the training's token-span F1 beside them (the figure its MLflow run recorded)."""
    index = np.flatnonzero(test)
    rows = []
    summary: dict[str, Any] = {"n_test_texts": int(len(index)), "match": "exact (start, end, type), characters",
                               "dictionary_entries": int(dictionary_entries), "max_length_tokens": int(max_length)}
    for kind in (*types, "all"):
        selected = set(types) if kind == "all" else {kind}
        totals = {"model": np.zeros(3, dtype=int), "dictionary": np.zeros(3, dtype=int)}
        for i in index:
            g = [s for s in gold[i] if s[2] in selected]
            totals["model"] += span_counts(g, [s for s in predicted[i] if s[2] in selected], types)
            totals["dictionary"] += span_counts(g, [s for s in baseline_spans[i] if s[2] in selected], types)
        m, d = _prf(*totals["model"]), _prf(*totals["dictionary"])
        n_gold = int(totals["model"][0] + totals["model"][2])
        rows.append((kind, n_gold, _round(m[0]), _round(m[1]), _round(m[2]), _round(d[0]), _round(d[1]),
                     _round(d[2])))
        suffix = "" if kind == "all" else f"_{kind}"
        summary[f"span_f1{suffix}"] = m[2]
        summary[f"baseline_span_f1{suffix}"] = d[2]
    summary["token_span_f1"] = token_model.get("span_f1")
    summary["baseline_token_span_f1"] = token_baseline.get("span_f1")
    tables = [Table("Exact-span precision, recall and F1 per entity type (test split)",
                    ("type", "gold spans", "model precision", "model recall", "model F1", "dictionary precision",
                     "dictionary recall", "dictionary F1"), tuple(rows))]
    if languages is not None and len(index):
        language_rows = []
        test_languages = languages.astype(str).to_numpy()[index]
        for language in sorted(set(test_languages)):
            chosen = index[test_languages == language]
            model = np.sum([span_counts(gold[i], predicted[i], types) for i in chosen], axis=0)
            dictionary = np.sum([span_counts(gold[i], baseline_spans[i], types) for i in chosen], axis=0)
            language_rows.append((language, int(len(chosen)), _round(_prf(*model)[2]), _round(_prf(*dictionary)[2])))
        tables.append(Table("Exact-span F1 by language (test split)", ("language", "texts", "model F1",
                                                                        "dictionary F1"), tuple(language_rows)))
    tables.append(Table("Token-span F1 as the training measured it (test split; spans past the maximum length "
                        "dropped from the gold)", ("type", "model", "dictionary"),
                        tuple((kind, _round(token_model.get(f"span_f1{'' if kind == 'all' else '_' + kind}")),
                               _round(token_baseline.get(f"span_f1{'' if kind == 'all' else '_' + kind}")))
                              for kind in (*types, "all"))))
    text = ("Spans are compared on the test split as character offsets into the de-identified text, exact on "
            "start, end and type. An undefined value (no span predicted, or none to find) is empty, not 0. The "
            "training's own figure compares token spans and drops gold spans past the encoder's maximum length; "
            "it is shown for reference.")
    return ReportSection("entity_spans", "Entity recognition: span F1 per entity type",
                         "V1 metrics per task (entity recognition: span-level P/R/F1), V5 baseline", summary=summary,
                         tables=tuple(tables), text=text)
