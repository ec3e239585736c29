"""The evaluation engine on synthetic model outputs: every task's metrics with intervals, the gate fails closed."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medllm_pipelines.lib.evaluate.engine import evaluate_outputs, policy_or_error
from medllm_pipelines.lib.evaluate.gate import GatePolicyError, gate_policy
from medllm_pipelines.lib.evaluate.outputs import ModelOutputs, coarse_age_band, person_groups

N = 300


def _frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * (n // 2) + ["validation"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    return pd.DataFrame({
        "example_id": [f"e{i}" for i in range(n)], "split": split,
        "patient_pseudonym": [f"p{i}" for i in range(n)], "loss": rng.exponential(1.0, n),
        "sex": rng.choice(["F", "M"], n), "age_band": rng.choice(["<40", "40-64", ">=65"], n),
        "institution": rng.choice(["a", "b"], n),
    })


def _binary(memorised: bool = False, seed: int = 0) -> ModelOutputs:
    rng = np.random.default_rng(seed)
    frame = _frame(seed=seed)
    y = rng.integers(0, 2, N)
    model = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.2, N), 0.01, 0.99)
    baseline = np.clip(0.5 + 0.2 * (2 * y - 1) + rng.normal(0, 0.25, N), 0.01, 0.99)
    if memorised:  # members' losses far below non-members'
        frame.loc[frame["split"] == "train", "loss"] = 0.01
    return ModelOutputs("binary", frame, y, model, "t2d_risk", "3", baseline=baseline, baseline_name="logistic")


POLICY = {"primary_metric": "roc_auc", "baseline_margin": 0.02, "ece_max": 0.2, "subgroup_gap_max": 0.3,
          "min_group_size": 10, "mia_auc_max": 0.6, "n_boot": 200}


def test_binary_metrics_intervals_and_gate_pass() -> None:
    outputs = _binary()
    result = evaluate_outputs("t2d_risk", outputs, gate_policy("t2d_risk", POLICY))
    test = outputs.rows("test")
    expected = roc_auc_score(outputs.y_true[test], outputs.model[test])
    assert result.model_value("roc_auc") == pytest.approx(expected, abs=1e-12)
    interval = result.intervals["model"]["roc_auc"]
    assert interval["percentile"][0] <= expected <= interval["percentile"][1]
    assert interval["bca"] is not None
    assert result.deltas["roc_auc"]["estimate"] == pytest.approx(
        expected - roc_auc_score(outputs.y_true[test], outputs.baseline[test]), abs=1e-12)
    assert result.threshold["chosen_on"] == "validation"
    assert {"roc", "pr", "decision_curve", "confusion", "reliability"} <= set(result.curves["model"])
    assert 0 <= result.calibration["ece"] <= 1
    assert result.fairness["largest_gap"] is not None
    assert 0.35 < result.membership["auc"] < 0.65  # losses drawn independently of membership
    assert result.gate.passed, result.gate.summary()
    assert {c["name"] for c in result.gate.as_metadata()["criteria"]} >= {"ece", "membership inference AUC"}
    assert "test_roc_auc" in result.mlflow_metrics() and "baseline_test_roc_auc" in result.mlflow_metrics()


def test_a_memorising_model_fails_the_membership_criterion() -> None:
    result = evaluate_outputs("t2d_risk", _binary(memorised=True), gate_policy("t2d_risk", POLICY))
    assert result.membership["auc"] > 0.9
    assert not result.gate.passed and result.gate.failed == ["membership inference AUC"]


def test_no_thresholds_fail_closed_but_still_measure() -> None:
    policy, error = policy_or_error("t2d_risk", {})
    assert policy is None and "declares no evaluation thresholds" in error
    result = evaluate_outputs("t2d_risk", _binary(), policy, policy_error=error)
    assert result.model_value("roc_auc") is not None
    assert not result.gate.passed and "declares no evaluation thresholds" in result.gate.reason


@pytest.mark.parametrize("block, message", [
    ({"primary_metric": "roc_auc"}, "baseline_margin is required"),
    ({"primary_metric": "roc_auc", "baseline_margin": 0.1, "ece": 0.1}, "unknown evaluation keys"),
    ({"primary_metric": "roc_auc", "baseline_margin": -1}, "must be >= 0"),
    ({"primary_metric": "roc_auc", "baseline_margin": 0.1, "attack": {"epsilon": 0.1}}, "attack must be"),
])
def test_malformed_policies_are_refused(block, message) -> None:
    with pytest.raises(GatePolicyError, match=message):
        gate_policy("x", block)


def test_a_test_split_with_one_class_is_undefined_and_the_gate_fails() -> None:
    outputs = _binary()
    y = outputs.y_true.copy()
    y[outputs.rows("test")] = 0
    one_class = ModelOutputs("binary", outputs.frame, y, outputs.model, "t2d_risk", "3",
                             baseline=outputs.baseline, baseline_name="logistic")
    result = evaluate_outputs("t2d_risk", one_class, gate_policy("t2d_risk", POLICY))
    assert result.model_value("roc_auc") is None and "roc_auc" in result.metrics["model"]["undefined"]
    assert not result.gate.passed
    assert result.gate.criteria[0].value is None and result.gate.criteria[0].reason


def test_an_attack_threshold_without_a_measured_attack_fails_closed() -> None:
    policy = gate_policy("t2d_risk", {**POLICY, "attack": {"epsilon": 0.1, "accuracy_min": 0.5}})
    result = evaluate_outputs("t2d_risk", _binary(), policy)
    assert not result.gate.passed and any("attack" in name for name in result.gate.failed)


def test_multiclass_regression_and_case_tasks() -> None:
    rng = np.random.default_rng(1)
    frame = _frame()
    y = rng.integers(0, 3, N)
    logits = rng.normal(0, 1, (N, 3)) + 2.0 * np.eye(3)[y]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    majority = np.tile(np.bincount(y, minlength=3) / N, (N, 1))
    multi = evaluate_outputs("triage", ModelOutputs("multiclass", frame, y, probabilities, "triage", "1",
                                                    baseline=majority, baseline_name="majority",
                                                    class_names=("a", "b", "c")),
                             gate_policy("triage", {"primary_metric": "macro_f1", "baseline_margin": 0.0,
                                                    "ece_max": 0.5, "n_boot": 100}))
    assert multi.model_value("macro_f1") > multi.baseline_value("macro_f1")
    assert multi.calibration["kind"] == "top-label" and multi.gate.passed

    target = rng.normal(80, 10, N)
    regression = evaluate_outputs("vitals_forecast", ModelOutputs(
        "regression", frame, target, target + rng.normal(0, 3, N), "vitals_forecast", "1",
        baseline=np.full(N, target.mean()), baseline_name="train mean"),
        gate_policy("vitals_forecast", {"primary_metric": "rmse", "baseline_margin": 0.0, "n_boot": 100}))
    assert regression.model_value("rmse") < regression.baseline_value("rmse")
    assert regression.gate.passed and regression.gate.criteria[0].comparison == "<="

    counts = rng.integers(0, 5, (N, 3)).astype(float)
    spans = evaluate_outputs("clinical_entities", ModelOutputs("spans", frame, np.zeros(N), counts, "e", "1"),
                             None, policy_error="none declared")
    tp, fp, fn = counts[frame["split"].eq("test").to_numpy()].sum(axis=0)
    assert spans.model_value("span_precision") == pytest.approx(tp / (tp + fp))
    assert spans.model_value("span_recall") == pytest.approx(tp / (tp + fn))
    assert not spans.gate.passed

    cases = np.column_stack([rng.uniform(0.5, 1, N), rng.uniform(0.3, 1, N), rng.uniform(0, 5, N)])
    cases[:10, :] = np.nan  # images without a lesion: Dice and IoU undefined there
    segmentation = evaluate_outputs("lesion_segmentation", ModelOutputs("segmentation", frame, np.zeros(N), cases,
                                                                        "seg", "1"), None)
    assert segmentation.model_value("dice") == pytest.approx(np.nanmean(cases[frame["split"].eq("test"), 0]))


def test_outputs_are_validated() -> None:
    frame = _frame(10)
    with pytest.raises(ValueError, match="lack the columns"):
        ModelOutputs("binary", frame.drop(columns="loss"), np.zeros(10), np.zeros(10), "m", "1")
    with pytest.raises(ValueError, match="unknown evaluation task"):
        ModelOutputs("ranking", frame, np.zeros(10), np.zeros(10), "m", "1")
    with pytest.raises(ValueError, match="shape"):
        ModelOutputs("spans", frame, np.zeros(10), np.zeros((10, 2)), "m", "1")


def test_person_groups_fold_five_year_bands() -> None:
    patients = pd.DataFrame({"patient_pseudonym": ["a", "b", "c"], "sex": ["F", "M", None],
                             "age_band": ["35-39", "60-64", "90+"], "institution": ["x", "y", "x"]})
    groups = person_groups(pd.Series(["a", "b", "c", "zz"]), patients)
    assert groups["age_band"].tolist() == ["<40", "40-64", ">=65", "unknown"]
    assert groups["sex"].tolist() == ["F", "M", "unknown", "unknown"]
    assert coarse_age_band("garbage") == "unknown"


def test_the_report_is_written_as_json_html_and_pdf_with_hashes(tmp_path) -> None:
    import hashlib
    import json

    from medllm_pipelines.lib.evaluate.model_report import write_model_report
    from medllm_pipelines.lib.evaluate.outputs import ReportSection, Table

    result = evaluate_outputs("t2d_risk", _binary(), gate_policy("t2d_risk", POLICY))
    extra = ReportSection("public_benchmarks", "Public benchmarks", "5.3.2 (V5)", {"wdbc_accuracy": 0.977},
                          (Table("WDBC", ("ours", "published"), ((0.977, 0.975),)),))
    files = write_model_report(result, {"dataset_version": "abc", "code_version": "deadbeef"}, tmp_path, [extra])
    report = json.loads(files.json_path.read_text())
    assert report["gate"]["passed"] is True and report["spec_id"] == "t2d_risk"
    assert report["content_sha256"]["pdf"] == hashlib.sha256(files.pdf_path.read_bytes()).hexdigest()
    assert report["content_sha256"]["html"] == hashlib.sha256(files.html_path.read_bytes()).hexdigest()
    html_text = files.html_path.read_text()
    for heading in ("Metrics and baseline", "Subgroups", "Membership inference", "Promotion gate", "Public benchmarks",
                    "data:image/png;base64"):
        assert heading in html_text, heading
    assert files.pdf_path.read_bytes().startswith(b"%PDF")
    assert oct(files.pdf_path.stat().st_mode)[-3:] == "600"
    assert [s["key"] for s in report["sections"]] == ["public_benchmarks"]


def test_an_attribute_with_too_few_rows_per_group_is_reported_not_gated() -> None:
    outputs = _binary()
    frame = outputs.frame.copy()
    test = frame["split"].eq("test").to_numpy()
    frame.loc[test, "age_band"] = ["<40"] * 3 + [">=65"] * (int(test.sum()) - 3)  # one group of 3 rows
    result = evaluate_outputs("t2d_risk", ModelOutputs("binary", frame, outputs.y_true, outputs.model, "t2d_risk", "3",
                                                       baseline=outputs.baseline), gate_policy("t2d_risk", POLICY))
    assert result.fairness["too_small_attributes"] == ["age_band"]
    assert set(result.fairness["gated_attributes"]) == {"sex", "institution"}
    assert result.fairness["largest_gap"] is not None and result.gate.passed

    strict = gate_policy("t2d_risk", {**POLICY, "min_group_size": 500})  # no attribute left to gate: fails closed
    result = evaluate_outputs("t2d_risk", outputs, strict)
    assert result.fairness["largest_gap"] is None and "nothing to check" in result.fairness["reason"]
    assert any("subgroup" in name for name in result.gate.failed)
