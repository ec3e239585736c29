"""The text adapter (issue 12): the triage classifier and the entity tagger scored on every row of their splits,
the dataset rebuilt with the training's version, baselines, explanations with a faithfulness score that beats
random deletion, the hand-written dialogues, span F1 per type, and bad records refused with a clear error."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.dataset import join_features_with_splits
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest, adapter_for
from medllm_pipelines.lib.evaluate.adapters import text as text_adapter
from medllm_pipelines.lib.evaluate.gate import gate_policy
from medllm_pipelines.lib.evaluate.outputs import ModelOutputs
from medllm_pipelines.lib.train.store import ModelStore
from medllm_pipelines.lib.train.text.training import TextTrainConfig

DEPARTMENTS = {
    "Cardiology": ["chest pain", "palpitations", "胸口闷痛", "心慌"],
    "Dermatology": ["itchy rash", "red spots", "起红疹子", "很痒"],
    "Endocrinology": ["always thirsty", "high sugar", "口渴", "血糖高"],
    "Gastroenterology": ["stomach ache", "diarrhoea", "胃疼", "拉肚子"],
    "Neurology": ["migraine", "dizzy spells", "头晕", "手麻"],
    "Orthopedics": ["knee pain", "back pain", "膝盖疼", "腰疼"],
    "Respiratory Medicine": ["cough", "phlegm", "咳嗽", "有痰"],
}
FILLER = ["since monday", "for a week", "it is worse at night", "好几天了", "最近", "please help"]
SYMPTOMS = ["cough", "fever", "rash", "headache", "咳嗽", "发烧", "头痛", "皮疹"]
DISEASES = ["asthma", "diabetes", "高血压", "感冒"]
DRUGS = ["aspirin", "metformin", "降压药", "布洛芬"]
TINY = TextTrainConfig(d_model=16, n_heads=2, n_layers=1, dim_feedforward=32, dropout=0.0, max_length=24, lr=0.01,
                       batch_size=16, max_epochs=8, early_stopping_patience=8, seed=5)
TINY_TAGGER = dataclasses.replace(TINY, d_model=32, dim_feedforward=64, max_epochs=12, early_stopping_patience=12,
                                  seed=3)


def _split(i: int, n: int) -> str:
    return "train" if i < 0.6 * n else "validation" if i < 0.75 * n else "test"


def _patients(n: int) -> pd.DataFrame:
    return pd.DataFrame({"patient_pseudonym": [f"p{i:03d}" for i in range(n)],
                         "sex": ["F" if i % 2 else "M" for i in range(n)],
                         "age_band": [("25-29", "50-54", "70-74")[i % 3] for i in range(n)],
                         "institution": [("north", "south")[i % 2] for i in range(n)]})


def _triage_tables(n: int = 280) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    classes = list(DEPARTMENTS)
    rows, splits = [], []
    for i in range(n):
        label = classes[i % len(classes)]
        text = f"{rng.choice(FILLER)} {rng.choice(DEPARTMENTS[label])}\n{rng.choice(FILLER)}"
        rows.append({"text_id": f"t{i:03d}", "patient_pseudonym": f"p{i:03d}", "text": text, "label": label,
                     "language": "zh" if any(ord(c) > 255 for c in text) else "en"})
        splits.append({"text_id": f"t{i:03d}", "patient_pseudonym": f"p{i:03d}", "split": _split(i, n)})
    return {"dataset": pd.DataFrame(rows), "splits": pd.DataFrame(splits), "patients": _patients(n)}


def _entity_tables(n: int = 180) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows, splits = [], []
    for i in range(n):
        parts, spans = [], []
        pieces = (("i have ", None), (SYMPTOMS[rng.integers(8)], "SYMPTOM"), (" because of ", None),
                  (DISEASES[rng.integers(4)], "DISEASE"), (" so i take ", None), (DRUGS[rng.integers(4)], "DRUG"))
        for piece, kind in pieces:
            start = sum(len(p) for p in parts)
            parts.append(piece)
            if kind:
                spans.append([start, start + len(piece), kind])
        rows.append({"text_id": f"e{i:03d}", "patient_pseudonym": f"p{i:03d}", "text": "".join(parts),
                     "entities_json": json.dumps(spans), "language": "en" if i % 3 else "zh"})
        splits.append({"text_id": f"e{i:03d}", "patient_pseudonym": f"p{i:03d}", "split": _split(i, n)})
    return {"dataset": pd.DataFrame(rows), "splits": pd.DataFrame(splits), "patients": _patients(n)}


def _tokenizer(frame: pd.DataFrame):
    from medllm_pipelines.lib.train.text.tokenizer import train_tokenizer

    return train_tokenizer(frame.assign(source="dialogues")[["text", "patient_pseudonym", "language",
                                                             "source"]]).tokenizer


def _request(spec, dataset, tables, model_dir, tmp_path, **record) -> EvaluationRequest:
    return EvaluationRequest(
        spec=spec, policy=gate_policy(spec.id, spec.evaluation), dataset=dataset, tables=tables,
        record={"model_dir": str(model_dir), "registered_model": spec.id, "registered_version": "4",
                "dataset_version": dataset.version, **record},
        store=ModelStore(tmp_path), size="demo", seed=0)


@pytest.fixture(scope="module")
def triage(tmp_path_factory):
    from medllm_pipelines.lib.train.text.training import train_text_classifier

    spec, tables = load_spec("triage"), _triage_tables()
    dataset = text_adapter.dataset(spec, tables)
    result = train_text_classifier(dataset.frame, _tokenizer(dataset.frame), spec.target["classes"], TINY,
                                   tmp_path_factory.mktemp("triage"), spec_id=spec.id,
                                   dataset_version=dataset.version)
    root = tmp_path_factory.mktemp("triage_eval")
    request = _request(spec, dataset, tables, result.model_dir, root)
    return request, result, text_adapter.outputs(request)


@pytest.fixture(scope="module")
def entities(tmp_path_factory):
    from medllm_pipelines.lib.train.text.entities import train_entity_tagger

    spec, tables = load_spec("clinical_entities"), _entity_tables()
    dataset = text_adapter.dataset(spec, tables)
    result = train_entity_tagger(dataset.frame, _tokenizer(dataset.frame), spec.target["entity_types"], TINY_TAGGER,
                                 tmp_path_factory.mktemp("entities"), spec_id=spec.id, dataset_version=dataset.version)
    request = _request(spec, dataset, tables, result.model_dir, tmp_path_factory.mktemp("entities_eval"))
    return request, result, text_adapter.outputs(request)


# --- dataset ---------------------------------------------------------------------------------------------------


def test_both_specs_use_this_adapter_and_declare_a_gate_with_the_issue_mia_target() -> None:
    for spec_id in ("triage", "clinical_entities"):
        assert adapter_for(spec_id).load() is text_adapter
        policy = gate_policy(spec_id, load_spec(spec_id).evaluation)
        assert policy.mia_auc_max == 0.60 and policy.attack_epsilon is None  # no gradient attack on tokens


def test_the_dataset_is_the_trainings_join_whatever_the_row_order() -> None:
    spec, tables = load_spec("triage"), _triage_tables(70)
    expected = join_features_with_splits(tables["dataset"], tables["splits"], id_column="text_id")
    shuffled = {**tables, "dataset": tables["dataset"].sample(frac=1.0, random_state=1)}
    built = text_adapter.dataset(spec, shuffled)
    assert built.version == expected.version and len(built.frame) == 70
    assert built.rows_per_split == {"train": 42, "validation": 11, "test": 17}


def test_the_dataset_refuses_missing_tables_and_keys() -> None:
    spec, tables = load_spec("triage"), _triage_tables(14)
    with pytest.raises(KeyError, match="splits"):
        text_adapter.dataset(spec, {"dataset": tables["dataset"]})
    with pytest.raises(ValueError, match="text_id"):
        text_adapter.dataset(spec, {**tables, "splits": tables["splits"].drop(columns="text_id")})


# --- triage ----------------------------------------------------------------------------------------------------


def test_triage_scores_every_row_with_probabilities_losses_groups_and_the_registered_name(triage) -> None:
    request, _, out = triage
    assert isinstance(out, ModelOutputs) and out.task == "multiclass"
    n = len(request.dataset.frame)
    assert out.model.shape == (n, 7) and np.allclose(out.model.sum(axis=1), 1.0, atol=1e-6)
    assert set(out.frame["split"]) == {"train", "validation", "test"}
    assert out.frame["example_id"].tolist() == request.dataset.frame["text_id"].tolist()
    expected_loss = -np.log(np.clip(out.model[np.arange(n), out.y_true], 1e-300, 1.0))
    assert np.allclose(out.frame["loss"], expected_loss) and (out.frame["loss"] >= 0).all()
    assert set(out.frame["sex"]) == {"F", "M"} and set(out.frame["age_band"]) == {"<40", "40-64", ">=65"}
    assert (out.model_name, out.model_version) == ("triage", "4")
    assert out.class_names == tuple(request.spec.target["classes"])
    assert out.gate_values == {} and any("No gradient attack" in line for line in out.limits)


def test_triage_beats_the_training_class_frequency_baseline_on_test(triage) -> None:
    request, result, out = triage
    train = out.rows("train")
    frequencies = np.bincount(out.y_true[train], minlength=7) / train.sum()
    assert np.allclose(out.baseline, frequencies, atol=1e-8)  # every row, the prior of the training split
    test = out.rows("test")
    accuracy = float(np.mean(out.model[test].argmax(axis=1) == out.y_true[test]))
    baseline_accuracy = float(np.mean(out.baseline[test].argmax(axis=1) == out.y_true[test]))
    assert accuracy == pytest.approx(result.test_metrics["test_accuracy"])  # the training's own test figure
    assert accuracy > 0.8 > baseline_accuracy


def test_the_baseline_breaks_frequency_ties_toward_the_lower_class_and_needs_training_rows() -> None:
    prior = text_adapter.class_frequency_baseline(np.array([2, 1, 2, 1]), 3, 2)
    assert prior.shape == (2, 3) and np.argmax(prior[0]) == 1 and prior[0, 0] == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="no labelled rows"):
        text_adapter.class_frequency_baseline(np.array([], dtype=int), 3, 2)


def test_explanations_are_faithful_complete_and_show_no_dialogue_text(triage) -> None:
    request, _, out = triage
    section = {s.key: s for s in out.sections}["explanations"]
    summary = section.summary
    n_test = int(out.rows("test").sum())
    assert summary["n_explained"] == min(40, n_test) and summary["n_test"] == n_test
    assert summary["mean_abs_convergence_delta"] < 0.05  # the path integral is computed accurately
    # deleting the most attributed words first removes the evidence faster than deleting at random
    assert summary["faithfulness_area_difference"] > 0.05
    assert summary["faithfulness_interval_95"][0] > 0
    assert summary["probability_drop_at_20pct_attributed"] > summary["probability_drop_at_20pct_random"]
    curve = section.tables[2].rows
    assert curve[0][1] == curve[0][2] and curve[-1][1] == pytest.approx(curve[-1][2], abs=1e-6)
    assert section.figures[0].png.startswith(b"\x89PNG")
    departments = [row[0] for row in section.tables[1].rows]
    assert set(departments) <= set(out.class_names) and len(section.tables[0].rows) == 10
    rendered = json.dumps([s.as_dict() for s in out.sections], ensure_ascii=False)
    texts = request.dataset.frame["text"]
    assert not any(text in rendered for text in texts) and "p0" not in rendered  # no text, no pseudonym


def test_the_hand_written_dialogues_are_reported_next_to_the_synthetic_test_split(triage) -> None:
    _, _, out = triage
    section = {s.key: s for s in out.sections}["real_scenario_validation"]
    assert section.summary["n_written"] == 56
    assert 0.0 <= section.summary["written_accuracy"] <= section.summary["written_top3_accuracy"] <= 1.0
    rows = {(r[0], r[1]): r for r in section.tables[0].rows}
    assert rows[("hand-written", "all")][2] == 56 and {("hand-written", "en"), ("hand-written", "zh")} <= set(rows)
    assert rows[("synthetic test split", "all")][3] == pytest.approx(section.summary["synthetic_test_accuracy"],
                                                                     abs=1e-4)


def test_a_bad_record_is_refused_with_a_clear_error(triage, tmp_path) -> None:
    request, _, _ = triage
    with pytest.raises(ValueError, match="names no model_dir"):
        text_adapter.outputs(dataclasses.replace(request, record={}))
    with pytest.raises(FileNotFoundError, match="missing"):
        text_adapter.outputs(dataclasses.replace(request, record={"model_dir": str(tmp_path / "gone")}))
    other = dataclasses.replace(request.dataset, version="f" * 64)
    with pytest.raises(ValueError, match="trained on dataset version"):
        text_adapter.outputs(dataclasses.replace(request, dataset=other))
    with pytest.raises(ValueError, match="evaluates"):
        text_adapter.outputs(dataclasses.replace(request, spec=load_spec("t2d_risk")))


# --- clinical entities -----------------------------------------------------------------------------------------


def test_span_counts_match_exactly_on_start_end_and_type() -> None:
    gold = [(0, 5, "SYMPTOM"), (10, 16, "DRUG"), (20, 22, "PERSON")]
    predicted = [(0, 5, "SYMPTOM"), (10, 15, "DRUG"), (30, 33, "DISEASE")]
    assert text_adapter.span_counts(gold, predicted, ["SYMPTOM", "DISEASE", "DRUG"]) == (1, 2, 1)
    assert text_adapter.span_counts([], [], ["SYMPTOM"]) == (0, 0, 0)


def test_entities_score_every_text_against_its_gold_spans(entities) -> None:
    request, result, out = entities
    frame = request.dataset.frame
    assert out.task == "spans" and out.model.shape == (len(frame), 3)
    gold_counts = np.array([len(json.loads(v)) for v in frame["entities_json"]])
    assert np.array_equal(out.model[:, 0] + out.model[:, 2], gold_counts)  # tp + fn = gold spans
    train = out.rows("train")
    assert np.isnan(out.baseline[train]).all() and np.isfinite(out.baseline[~train]).all()
    assert np.isfinite(out.frame["loss"]).all() and (out.frame["loss"] >= 0).all()
    assert out.frame.loc[train, "loss"].mean() < 1.0
    test = out.rows("test")
    tp, fp, fn = out.model[test].sum(axis=0)
    assert 2 * tp / (2 * tp + fp + fn) >= 0.9


def test_the_entity_section_has_f1_per_type_for_model_and_dictionary(entities) -> None:
    _, result, out = entities
    (section,) = out.sections
    assert section.key == "entity_spans"
    table = {row[0]: row for row in section.tables[0].rows}
    assert set(table) == {"SYMPTOM", "DISEASE", "DRUG", "all"}
    for row in table.values():
        assert row[1] > 0 and all(v is None or 0.0 <= v <= 1.0 for v in row[2:])
    # the training's own token-span figure is reproduced; on these whole-word spans the exact-span one equals it
    assert section.summary["token_span_f1"] == pytest.approx(result.test_metrics["test_span_f1"])
    assert section.summary["span_f1"] == pytest.approx(section.summary["token_span_f1"])
    assert section.summary["baseline_token_span_f1"] == pytest.approx(result.baseline_metrics["baseline_test_span_f1"])
    languages = {row[0] for row in section.tables[1].rows}
    assert languages == {"en", "zh"}


def test_length_batched_scoring_equals_the_serving_predictors(triage, entities) -> None:
    from medllm_pipelines.lib.train.text.entities import EntityTaggerPredictor
    from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor

    request, _, out = triage
    texts = request.dataset.frame["text"].tolist()
    served = TextClassifierPredictor.load(request.record["model_dir"]).predict_proba(texts)
    assert np.allclose(out.model, served, atol=1e-5)
    request, _, _ = entities
    predictor = EntityTaggerPredictor.load(request.record["model_dir"])
    texts = [*request.dataset.frame["text"].tolist()[:40], "   "]  # a text with no token: no span, loss undefined
    spans, losses = text_adapter.tag_texts(predictor, texts, [[] for _ in texts])
    assert spans == [[(e["start"], e["end"], e["type"]) for e in found] for found in predictor.entities(texts)]
    assert np.isfinite(losses[:-1]).all() and np.isnan(losses[-1]) and spans[-1] == []


def test_the_engine_evaluates_both_outputs_and_decides_a_gate(triage, entities) -> None:
    from medllm_pipelines.lib.evaluate.engine import evaluate_outputs

    for request, _, out in (triage, entities):
        policy = dataclasses.replace(request.policy, n_boot=20)
        evaluation = evaluate_outputs(request.spec.id, out, policy)
        assert evaluation.model_value(policy.primary_metric) is not None
        assert evaluation.baseline_value(policy.primary_metric) is not None
        assert evaluation.membership["auc"] is not None and 0.0 <= evaluation.membership["auc"] <= 1.0
        names = {c.name for c in evaluation.gate.criteria}
        assert any("membership" in n for n in names) and not any("attack" in n for n in names)
    section = {s.key: s for s in entities[2].sections}["entity_spans"]
    assert evaluate_outputs("clinical_entities", entities[2], None).model_value("span_f1") == \
        pytest.approx(section.summary["span_f1"])
