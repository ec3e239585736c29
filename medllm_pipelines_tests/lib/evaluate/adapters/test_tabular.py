"""The tabular adapter (t2d_risk): every row scored by the registered MLP and the baseline, attacks, defences and
SHAP explanations on a tiny model trained here on T2D-like data drawn from the synthetic hospital's own rule.

One model is trained for the module (~5 s) and ``outputs`` runs once on it (demo budget); the other tests read
that result. The whole file stays well under a minute on two shared cores.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medllm_pipelines.lib.curate.dataset import join_features_with_splits
from medllm_pipelines.lib.curate.preprocessing import fit_preprocessing, save_preprocessing
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.curate.splits import split_persons
from medllm_pipelines.lib.evaluate import robustness as R
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest, adapter_for
from medllm_pipelines.lib.evaluate.adapters import tabular
from medllm_pipelines.lib.evaluate.gate import gate_policy
from medllm_pipelines.lib.evaluate.membership import binary_log_losses
from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none
from medllm_pipelines.lib.synth.ground_truth import DIABETES_RULE
from medllm_pipelines.lib.train.predictor import TabularPredictor
from medllm_pipelines.lib.train.runs import training_config
from medllm_pipelines.lib.train.store import ModelStore
from medllm_pipelines.lib.train.tabular import train_tabular_classifier

SPEC = load_spec("t2d_risk")
N_PATIENTS = 800


def t2d_features(n: int, seed: int = 0) -> pd.DataFrame:
    """Per-person features in clinical units, labels drawn from the synthetic hospital's T2D rule (prevalence ~1/3)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n).round(1)
    bmi = np.clip(rng.normal(26.5, 4.6, n), 16, 48).round(1)
    glycaemic = 0.35 * (age - 55) / 15 + 0.3 * (bmi - 25) / 4 + 0.88 * rng.standard_normal(n)
    hba1c = (3.9 + np.exp(np.log(1.7) + 0.5 * glycaemic + 0.08 * rng.standard_normal(n))).clip(4, 14.5).round(1)
    glucose = (3.3 + np.exp(np.log(2.0) + 0.5 * (0.85 * glycaemic + 0.53 * rng.standard_normal(n)))).clip(3.5, 22)
    p = DIABETES_RULE.probability({"hba1c_percent": hba1c, "fasting_glucose_mmol_l": glucose.round(1), "bmi": bmi,
                                   "age_years": age})
    frame = pd.DataFrame({
        "patient_pseudonym": [f"PSN{i:05d}" for i in rng.permutation(n)],
        "age_years": age, "bmi": bmi, "hba1c": hba1c, "fasting_glucose": glucose.round(1),
        "systolic_bp": rng.normal(125, 15, n).round(), "diastolic_bp": rng.normal(78, 9, n).round(),
        "heart_rate": rng.normal(76, 10, n).round(), "total_cholesterol": rng.normal(4.9, 0.95, n).round(2),
        "sex": rng.choice(["female", "male"], n), "label": (rng.random(n) < p).astype(int)})
    frame.loc[rng.random(n) < 0.05, "total_cholesterol"] = np.nan  # the declared missing-value policy fills these
    return frame


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    features = t2d_features(N_PATIENTS)
    splits = split_persons(features, SPEC.split_config, SPEC.feature_columns, ("patient_pseudonym",)).splits
    rng = np.random.default_rng(1)
    patients = pd.DataFrame({"patient_pseudonym": features["patient_pseudonym"], "sex": features["sex"],
                             "age_band": rng.choice(["30-34", "50-54", "70-74"], len(features)),
                             "institution": rng.choice(["north", "south"], len(features))})
    return {"dataset": features, "splits": splits, "patients": patients}


@pytest.fixture(scope="module")
def trained(tables, tmp_path_factory) -> dict[str, Any]:
    """The curate stage's preprocessing saved in a model store, and a tiny model trained on it as training does."""
    data = tabular.dataset(SPEC, tables)
    store = ModelStore(tmp_path_factory.mktemp("store"))
    fitted = fit_preprocessing(data.frame, SPEC.preprocessing, dataset_version=data.version)
    save_preprocessing(fitted, store.preprocessing_folder(SPEC.id, data.version))
    config = dataclasses.replace(training_config(SPEC, "demo"), max_epochs=20)
    result = train_tabular_classifier(data.frame, fitted, "label", config, store.model_folder(SPEC.id, data.version),
                                      spec_id=SPEC.id)
    record = {"model_dir": str(result.model_dir), "dataset_version": data.version, "registered_model": "t2d_risk",
              "registered_version": "4", "preprocessing_fingerprint": fitted.fingerprint()}
    return {"dataset": data, "store": store, "record": record}


def _request(tables, trained, **overrides: Any) -> EvaluationRequest:
    options = {"spec": SPEC, "policy": gate_policy(SPEC.id, SPEC.evaluation), "record": trained["record"],
               "dataset": trained["dataset"], "tables": tables, "store": trained["store"], "size": "demo", "seed": 0}
    return EvaluationRequest(**{**options, **overrides})


@pytest.fixture(scope="module")
def evaluated(tables, trained) -> dict[str, Any]:
    started = time.perf_counter()
    out = tabular.outputs(_request(tables, trained))
    return {"outputs": out, "seconds": time.perf_counter() - started,
            "predictor": TabularPredictor.load(trained["record"]["model_dir"])}


def _section(outputs, key: str):
    [section] = [s for s in outputs.sections if s.key == key]
    return section


def _table(section, title_start: str):
    [table] = [t for t in section.tables if t.title.startswith(title_start)]
    return table


# ----------------------------------------------------------------------------- dataset


def test_dataset_is_the_training_join_whatever_the_row_order(tables):
    data = tabular.dataset(SPEC, tables)
    assert data.version == join_features_with_splits(tables["dataset"], tables["splits"]).version
    shuffled = {name: frame.sample(frac=1.0, random_state=3) for name, frame in tables.items()}
    assert tabular.dataset(SPEC, shuffled).version == data.version
    assert set(data.frame["split"]) == {"train", "validation", "test"}
    assert adapter_for("t2d_risk").load() is tabular
    with pytest.raises(KeyError, match="splits"):
        tabular.dataset(SPEC, {"dataset": tables["dataset"]})


# ----------------------------------------------------------------------------- outputs


def test_every_row_is_scored_by_model_and_baseline_with_its_loss(evaluated, trained):
    out, predictor = evaluated["outputs"], evaluated["predictor"]
    data = trained["dataset"]
    assert out.task == "binary" and len(out.frame) == len(data.frame)
    assert out.frame["example_id"].is_unique
    assert (out.frame["example_id"] == data.frame["patient_pseudonym"]).all()
    assert out.frame["split"].value_counts().to_dict() == data.rows_per_split
    np.testing.assert_allclose(out.model, predictor.predict_proba(data.frame))
    np.testing.assert_allclose(out.frame["loss"], binary_log_losses(out.y_true, out.model))
    assert np.isfinite(out.baseline).all() and ((out.baseline >= 0) & (out.baseline <= 1)).all()
    test = out.rows("test")
    # the rule's Bayes AUC is ~0.89: both must rank well above chance, the baseline close to it
    assert roc_auc_or_none(out.y_true[test], out.model[test]) > 0.75
    assert roc_auc_or_none(out.y_true[test], out.baseline[test]) > 0.75
    assert (out.model_name, out.model_version) == ("t2d_risk", "4")
    assert "logistic regression" in out.baseline_name
    assert out.limits and all(isinstance(line, str) and line for line in out.limits)


def test_groups_come_from_the_deidentified_patients(evaluated, tables):
    out = evaluated["outputs"]
    groups = out.groups("test")
    assert set(groups.columns) == {"sex", "age_band", "institution"}
    assert set(groups["age_band"]) <= {"<40", "40-64", ">=65"}
    assert set(groups["institution"]) <= {"north", "south"}
    sexes = tables["patients"].set_index("patient_pseudonym")["sex"]
    assert (out.frame["sex"].to_numpy() == sexes.loc[out.frame["patient_pseudonym"]].to_numpy()).all()


def test_outputs_run_within_the_demo_budget(evaluated):
    # demo budget: ~20 s per spec on the 1,000-patient hospital; 800 patients here, on loaded shared cores
    assert evaluated["seconds"] < 40, evaluated["seconds"]


def test_a_model_on_other_preprocessing_is_refused(tables, trained, tmp_path):
    data = trained["dataset"]
    other = ModelStore(tmp_path)
    refit = fit_preprocessing(data.frame, dataclasses.replace(SPEC.preprocessing, scaling="minmax"),
                              dataset_version=data.version)
    save_preprocessing(refit, other.preprocessing_folder(SPEC.id, data.version))
    with pytest.raises(ValueError, match="not trained on the curate stage's preprocessing"):
        tabular.outputs(_request(tables, trained, store=other))
    stale = {**trained["record"], "dataset_version": "0" * 64}
    with pytest.raises(ValueError, match="training record is for dataset version"):
        tabular.outputs(_request(tables, trained, record=stale))


def test_labels_that_are_not_binary_are_refused(tables, trained):
    data = trained["dataset"]
    broken = dataclasses.replace(data, frame=data.frame.assign(label=data.frame["label"].astype(float) * 2))
    with pytest.raises(ValueError, match="only 0 and 1"):
        tabular.outputs(_request(tables, trained, dataset=broken))


def test_without_a_raw_feature_model_the_sections_are_undefined_and_no_attack_accuracy(tables, trained, monkeypatch):
    def not_affine(*args, **kwargs):
        raise ValueError("the preprocessing is not affine in hba1c")

    monkeypatch.setattr(R, "raw_feature_model", not_affine)
    out = tabular.outputs(_request(tables, trained))
    assert out.gate_values == {"attack_accuracy": None}  # the gate fails closed on it
    for section in out.sections:
        assert "not affine" in section.summary["undefined"] and not section.tables
    no_attack = gate_policy(SPEC.id, {**SPEC.evaluation, "attack": None})
    assert tabular.outputs(_request(tables, trained, policy=no_attack)).gate_values == {"attack_accuracy": None}


# ----------------------------------------------------------------------------- robustness


def test_attack_curves_fall_with_epsilon_and_feed_the_gate(evaluated):
    out = evaluated["outputs"]
    section = _section(out, "robustness")
    summary = section.summary
    assert section.clause.startswith("5.4.3")
    # the attacked rows are scored exactly as the deployed predictor scores them
    assert summary["raw_model_max_difference_from_predictor"] < 1e-4
    curve = _table(section, "Accuracy against epsilon")
    assert curve.headers[:3] == ("epsilon", "FGSM (white box)", "PGD (white box)")
    assert [row[0] for row in curve.rows] == [0.0, *summary["epsilons"]]
    pgd = [row[2] for row in curve.rows]
    fgsm = [row[1] for row in curve.rows]
    black_box = [row[3] for row in curve.rows]
    assert pgd[0] == pytest.approx(summary["clean_accuracy"], abs=1e-4) and pgd[0] > 0.7
    assert all(b <= a + 1e-9 for a, b in zip(pgd, pgd[1:], strict=False)), pgd
    assert pgd[-1] < pgd[0] - 0.3  # one standard deviation on every input flips most decisions
    assert all(p <= f + 1e-9 for p, f in zip(pgd, fgsm, strict=True))
    assert black_box[-1] < black_box[0] - 0.2  # probabilities alone suffice
    policy = gate_policy(SPEC.id, SPEC.evaluation)
    assert summary["gate_epsilon"] == policy.attack_epsilon
    assert out.gate_values["attack_accuracy"] == pytest.approx(summary["pgd_accuracy_at_gate_epsilon"])
    at_gate = pgd[summary["epsilons"].index(policy.attack_epsilon) + 1]
    assert out.gate_values["attack_accuracy"] == pytest.approx(at_gate, abs=1e-4)
    [figure] = section.figures
    assert figure.png.startswith(b"\x89PNG\r\n\x1a\n") and len(figure.png) > 5000


def test_defences_are_measured_before_and_after(evaluated):
    section = _section(evaluated["outputs"], "robustness")
    rows = {(row[0], row[2]): row for row in _table(section, "Defences").rows}
    gate_eps = section.summary["gate_epsilon"]
    adversarial = rows[("adversarial_training", gate_eps)]
    ensemble = rows[("logit_average_ensemble", gate_eps)]
    filtering = rows[("plausibility_filter", gate_eps)]
    for row in (adversarial, ensemble, filtering):
        assert 0.0 <= row[3] <= 1.0 and 0.0 <= row[4] <= 1.0
    # before: the registered model under the same PGD, so it matches the curve
    assert adversarial[3] == pytest.approx(section.summary["pgd_accuracy_at_gate_epsilon"], abs=1e-4)
    assert adversarial[4] == pytest.approx(section.summary["adversarially_trained_pgd_accuracy_at_gate_epsilon"],
                                           abs=1e-4)
    assert adversarial[4] >= adversarial[3] - 0.05  # PGD training does not make the model less robust
    assert "clean inputs rejected 0.0%" in filtering[5]  # in-range clean patients are never rejected


def test_clinical_perturbations_catch_the_unit_mixups(evaluated):
    section = _section(evaluated["outputs"], "robustness")
    table = _table(section, "Clinical perturbations").rows
    rows = {(row[0], row[1]): row for row in table if row[0] != "measurement_noise"}
    glucose = rows[("unit_mixup", "fasting_glucose")]
    hba1c = rows[("unit_mixup", "hba1c")]
    for mixup in (glucose, hba1c):
        assert mixup[4] < mixup[3] - 0.2  # x18 glucose or IFCC numbers read as % call (nearly) everyone diabetic
        assert mixup[6] == 1.0  # and the plausibility filter would have stopped every one of them
    assert rows[("missing", "hba1c")][4] <= rows[("missing", "hba1c")][3]
    # the same clean accuracy as the attack curves: the registered network is still in eval mode (no dropout)
    # after the defences retrained and ensembled it, and the raw-feature model scores as the predictor does
    assert all(row[3] == pytest.approx(section.summary["clean_accuracy"], abs=1e-3) for row in table)
    noise = [row for row in table if row[0] == "measurement_noise"]
    assert [row[2] for row in noise] == ["1 x declared CV", "2 x declared CV", "4 x declared CV"]


# ----------------------------------------------------------------------------- explanations


def test_shap_values_add_up_and_recover_the_rule(evaluated, trained):
    section = _section(evaluated["outputs"], "explanations")
    summary = section.summary
    assert summary["max_additivity_error"] < 1e-5
    importance = summary["global_importance"]
    ranked = list(importance)
    # the synthetic hospital's rule weighs HbA1c 1.3 and fasting glucose 0.7 against 0.3 for BMI and age
    assert ranked[:2] == ["hba1c", "fasting_glucose"]
    dropped = set(SPEC.numeric_features) - set(summary["model_inputs_after_selection"])
    assert dropped and all(importance[c] == 0.0 for c in dropped)  # what feature selection dropped explains nothing
    assert summary["deletion_faithfulness"] > 0.02
    assert summary["deletion_area_attribution"] > summary["deletion_area_random"]
    [figure] = section.figures
    assert figure.png.startswith(b"\x89PNG")
    assert "shap" in section.text and "captum" in section.text


def test_per_prediction_table_holds_test_pseudonyms_only(evaluated, trained):
    section = _section(evaluated["outputs"], "explanations")
    table = _table(section, "SHAP values per prediction")
    data = trained["dataset"].frame
    test_ids = sorted(data.loc[data["split"] == "test", "patient_pseudonym"])
    assert [row[0] for row in table.rows] == test_ids[:len(table.rows)] and len(table.rows) == 20
    assert table.headers[2:] == tuple(SPEC.numeric_features)
    probabilities = evaluated["predictor"].predict_proba(data.set_index("patient_pseudonym").loc[
        [row[0] for row in table.rows]].reset_index())
    np.testing.assert_allclose([row[1] for row in table.rows], probabilities, atol=1e-3)


def test_deletion_faithfulness_is_near_zero_for_random_attributions(evaluated, trained):
    predictor = evaluated["predictor"]
    data = trained["dataset"].frame
    test = data[data["split"] == "test"].reset_index(drop=True)
    raw = R.raw_feature_model(predictor.network, predictor.preprocessing,
                              tabular.filled_as_the_model_fills(predictor.preprocessing, test))
    index = np.arange(len(test))
    median = np.array([predictor.preprocessing.describe()["imputation_values"][c] for c in raw.columns])
    shap, _, _ = tabular.shapley_values(raw, predictor.network, index, raw.values[:8], permutations=5, seed=0)
    noise = np.random.default_rng(0).normal(size=shap.shape)
    informed = tabular.deletion_curves(raw, predictor.network, index, shap, median, random_orders=10, seed=0)
    uninformed = tabular.deletion_curves(raw, predictor.network, index, noise, median, random_orders=10, seed=0)
    assert abs(uninformed["faithfulness"]) < 0.03
    assert informed["faithfulness"] > uninformed["faithfulness"] + 0.03
    assert informed["attribution_curve"][0] == 0.0
    assert informed["attribution_curve"][-1] == pytest.approx(informed["random_curve"][-1])  # all deleted: same point
    with pytest.raises(ValueError, match="shape"):
        tabular.deletion_curves(raw, predictor.network, index, shap[:, :3], median, random_orders=1, seed=0)
