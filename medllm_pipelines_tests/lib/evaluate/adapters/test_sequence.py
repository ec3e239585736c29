"""The sequence adapter of the evaluation engine: tiny deterioration and forecast networks trained on simulated stays,
every window re-scored exactly as training scored its test split, NEWS2 and the training mean as baselines, the
perturbation suite and the temporal analysis, and bad input refused with a clear error."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from medllm_pipelines.lib.curate.sequences import (
    HOUR,
    STAY_KEYS,
    VITALS,
    build_forecast_windows,
    build_windows,
    split_stays,
)
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest, adapter_for
from medllm_pipelines.lib.evaluate.adapters import sequence as adapter
from medllm_pipelines.lib.evaluate.gate import gate_policy
from medllm_pipelines.lib.evaluate.membership import binary_log_losses
from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none
from medllm_pipelines.lib.synth.vitals import simulate_stay, stays_as_table
from medllm_pipelines.lib.train.sequence.runs import sequence_training_config
from medllm_pipelines.lib.train.sequence.training import train_deterioration_model, train_forecast_model
from medllm_pipelines.lib.train.store import ModelStore

N_STAYS = 90


@pytest.fixture(scope="module")
def hospital() -> dict[str, pd.DataFrame]:
    """Simulated stays at two institutions, their deterioration windows and splits, and a patients table."""
    rng = np.random.default_rng(7)
    vitals = stays_as_table([simulate_stay(rng) for _ in range(N_STAYS)])
    number = vitals["patient_pseudonym"].str[-6:].astype(int)
    vitals["institution"] = np.where(number % 2 == 0, "site_a", "site_b")
    windows = build_windows(vitals, 12).frame
    splits = split_stays(windows, load_spec("deterioration").split_config).splits
    persons = vitals[["patient_pseudonym", "institution"]].drop_duplicates().reset_index(drop=True)
    patients = persons.assign(sex=np.where(persons.index % 2 == 0, "female", "male"),
                              age_band=np.array(["35-39", "55-59", "80-84"])[persons.index % 3])
    return {"vitals": vitals, "windows": windows, "forecast": build_forecast_windows(vitals, "heart_rate").frame,
            "splits": splits, "patients": patients}


def _trained(spec_id: str, hospital, folder, *, policy=None):
    spec = load_spec(spec_id)
    tables = {"dataset": hospital["windows" if spec_id == "deterioration" else "forecast"],
              "splits": hospital["splits"], "vitals": hospital["vitals"], "patients": hospital["patients"]}
    dataset = adapter.dataset(spec, tables)
    config = dataclasses.replace(sequence_training_config(spec), max_epochs=3, hidden_size=16)
    trainer = train_deterioration_model if spec_id == "deterioration" else train_forecast_model
    result = trainer(hospital["vitals"], dataset.frame, config, folder, spec_id=spec_id,
                     dataset_version=dataset.version)
    record = {"model_dir": str(result.model_dir), "dataset_version": dataset.version,
              "registered_model": spec_id, "registered_version": "3"}
    request = EvaluationRequest(spec, policy or gate_policy(spec_id, spec.evaluation), record, dataset, tables,
                                ModelStore(folder / "store"), size="demo", seed=0)
    return request, result


@pytest.fixture(scope="module")
def deterioration(hospital, tmp_path_factory):
    request, result = _trained("deterioration", hospital, tmp_path_factory.mktemp("deterioration"))
    return request, result, adapter.outputs(request)


@pytest.fixture(scope="module")
def forecast(hospital, tmp_path_factory):
    spec = load_spec("vitals_forecast")
    attacked = gate_policy(spec.id, {**spec.evaluation, "attack": {"epsilon": 0.1, "accuracy_min": 0.5}})
    request, result = _trained("vitals_forecast", hospital, tmp_path_factory.mktemp("forecast"), policy=attacked)
    return request, result, adapter.outputs(request)


def _section(outputs, key):
    return next(s for s in outputs.sections if s.key == key)


def test_both_specs_are_routed_to_this_adapter_and_the_dataset_is_the_training_join(hospital) -> None:
    assert adapter_for("deterioration").load() is adapter and adapter_for("vitals_forecast").load() is adapter
    spec = load_spec("deterioration")
    tables = {"dataset": hospital["windows"], "splits": hospital["splits"]}
    first = adapter.dataset(spec, tables)
    shuffled = adapter.dataset(spec, {"dataset": hospital["windows"].sample(frac=1.0, random_state=1),
                                      "splits": hospital["splits"]})
    assert first.version == shuffled.version  # sorted as the training asset sorts: the record is found by it
    assert set(first.frame["split"]) == {"train", "validation", "test"}
    with pytest.raises(KeyError, match="splits"):
        adapter.dataset(spec, {"dataset": hospital["windows"]})


def test_every_window_is_scored_as_training_scored_the_test_split(deterioration) -> None:
    request, result, outputs = deterioration
    frame = request.dataset.frame
    assert outputs.task == "binary" and len(outputs.frame) == len(frame) == len(outputs.model)
    assert set(outputs.frame["split"]) == {"train", "validation", "test"}
    assert outputs.frame["example_id"].is_unique
    assert ((outputs.model >= 0) & (outputs.model <= 1)).all()
    test = outputs.rows("test")
    # the adapter rebuilds the windows with the saved scaler: the same test ROC-AUC as the training computed
    assert roc_auc_or_none(outputs.y_true[test], outputs.model[test]) == pytest.approx(
        result.test_metrics["test_roc_auc"], abs=1e-6)
    np.testing.assert_allclose(outputs.frame["loss"], binary_log_losses(outputs.y_true, outputs.model))
    assert (outputs.model_name, outputs.model_version) == ("deterioration", "3")


def test_the_news2_baseline_is_the_training_s_news2_on_every_window(deterioration) -> None:
    request, result, outputs = deterioration
    np.testing.assert_allclose(outputs.baseline, request.dataset.frame["news2"] / 20.0)
    assert np.isfinite(outputs.baseline).all() and outputs.baseline.max() <= 1.0
    test = outputs.rows("test")
    assert roc_auc_or_none(outputs.y_true[test], outputs.baseline[test]) == pytest.approx(
        result.baseline_metrics["baseline_news2_test_roc_auc"], abs=1e-9)
    assert "NEWS2" in outputs.baseline_name and "NEWS2 >= 20 t" in outputs.threshold_note


def test_groups_come_from_the_patients_table_and_the_stay_s_institution(deterioration) -> None:
    request, _, outputs = deterioration
    assert set(outputs.frame["sex"]) == {"female", "male"}
    assert set(outputs.frame["age_band"]) == {"<40", "40-64", ">=65"}
    assert (outputs.frame["institution"] == request.dataset.frame["institution"]).all()
    assert set(outputs.groups("test").columns) == {"sex", "age_band", "institution"}


def test_the_perturbation_suite_recomputes_news2_and_catches_a_unit_mixup(deterioration) -> None:
    request, _, outputs = deterioration
    section = _section(outputs, "perturbations")
    results = section.summary["results"]
    kinds = [(r["perturbation"], r["target"]) for r in results]
    assert [t for k, t in kinds if k == "missing"] == [*VITALS, "all"]
    assert sum(k == "measurement_noise" for k, _ in kinds) == 3 and ("unit_mixup", "temperature") in kinds
    test = outputs.rows("test")
    news2_auc = roc_auc_or_none(outputs.y_true[test], outputs.baseline[test])
    assert all(r["baseline_clean"] == pytest.approx(news2_auc) for r in results)  # NEWS2 rebuilt from the vitals
    assert section.summary["n_test_stays_used"] > 0 and section.summary["subsampled"] is False
    change = {(r["perturbation"], r["target"], r["setting"]): r["mean_abs_model_change"] for r in results}
    # 98.6 "degC" moves every risk far more than noise at the declared CVs does
    assert change[("unit_mixup", "temperature", "[degF] given as Cel")] > 5 * change[
        ("measurement_noise", ",".join(sorted(section.summary["measurement_cv"])), "CV x 1")]
    assert "gradient" in section.text and len(section.tables[0].rows) == len(results)


def test_beyond_the_stay_cap_a_seeded_choice_of_test_stays_is_perturbed(deterioration, monkeypatch) -> None:
    request, _, outputs = deterioration
    monkeypatch.setitem(adapter.STAY_CAP, "demo", 3)
    model = adapter.load_sequence_model(request.record["model_dir"], "binary")
    frame = request.dataset.frame.reset_index(drop=True)
    first, again = (adapter.perturbation_section(request, model, frame, outputs.y_true, outputs.model).summary
                    for _ in range(2))
    assert first["n_test_stays_used"] == 3 and first["subsampled"] is True
    assert first["n_test_windows_used"] < int(outputs.rows("test").sum())
    assert first["results"] == again["results"]  # seeded: the same stays and the same noise


def test_a_vital_missing_in_the_last_hours_equals_rebuilding_the_windows_without_it(deterioration) -> None:
    request, _, _ = deterioration
    model = adapter.load_sequence_model(request.record["model_dir"], "binary")
    vitals = request.tables["vitals"]
    frame = request.dataset.frame
    # one window per test stay, at its 20th hour or its last, so the gap falls inside the window
    windows = frame[frame["split"] == "test"].groupby(STAY_KEYS, sort=False).nth(20).reset_index(drop=True)
    clean = adapter.window_inputs(model, vitals, windows)
    masked = adapter.mask_last_hours(clean, ["heart_rate", "spo2"], 4)
    assert not np.allclose(masked.numpy(), clean.numpy())
    removed = vitals.copy()
    ends = removed.merge(windows[[*STAY_KEYS, HOUR]].rename(columns={HOUR: "end"}), on=STAY_KEYS, how="left")
    in_gap = (ends["end"].notna() & (ends[HOUR] > ends["end"] - 4) & (ends[HOUR] <= ends["end"])).to_numpy()
    assert in_gap.sum() >= 4 * len(windows) > 0
    removed.loc[in_gap, ["heart_rate", "spo2"]] = np.nan
    rebuilt = adapter.window_inputs(model, removed, windows)
    np.testing.assert_allclose(masked.numpy(), rebuilt.numpy(), atol=1e-6)
    # NEWS2's view of the same gap: the value carried forward from four hours earlier
    table = adapter.hourly_table(vitals, windows)
    gap = adapter.readings_at(table, windows, gap_columns=["heart_rate"], gap_hours=4)
    np.testing.assert_allclose(gap["heart_rate"], adapter.readings_at(adapter.hourly_table(removed, windows),
                                                                      windows)["heart_rate"])


def test_temporal_validation_compares_the_earliest_and_latest_thirds_by_stay(deterioration) -> None:
    _, _, outputs = deterioration
    section = _section(outputs, "temporal_validation")
    summary = section.summary
    assert summary["calendar_time_released"] is False and summary["resampling_unit"] == "stay"
    assert [row[0] for row in section.tables[0].rows] == ["earliest", "middle", "latest"]
    assert sum(row[2] for row in section.tables[0].rows) == int(outputs.rows("test").sum())
    for prefix in ("", "brier_"):
        low, high = summary[f"{prefix}late_minus_early_interval"]
        assert low <= summary[f"{prefix}late_minus_early"] <= high
        assert summary[f"{prefix}late_minus_early"] == pytest.approx(summary[f"{prefix}late"] -
                                                                    summary[f"{prefix}early"])
    assert "retraining" in section.text and "admission" in section.text


def test_a_third_without_positive_windows_has_an_undefined_roc_auc_with_its_reason(deterioration) -> None:
    request, _, _ = deterioration
    frame = pd.DataFrame({"patient_pseudonym": np.repeat(["p_a", "p_b"], 6), "institution": "site_a",
                          "stay_number": 1, HOUR: np.tile(np.arange(6), 2), "split": "test"})
    y_true = np.tile([0, 0, 0, 1, 0, 1], 2)  # deterioration late in the stay: the earliest third has no positive
    scores = np.tile([0.1, 0.2, 0.1, 0.6, 0.3, 0.7], 2)
    summary = adapter.temporal_section(request, frame, y_true, scores, scores).summary
    assert summary["early"] is None and summary["late"] == 1.0 and summary["late_minus_early"] is None
    assert "undefined" in summary["reason"] and summary["late_minus_early_interval"] is None
    assert summary["brier_early"] == pytest.approx(0.025)  # defined without positives: (0.1^2 + 0.2^2) / 2


def test_news2_triggers_are_compared_at_equal_alert_rate(deterioration) -> None:
    _, _, outputs = deterioration
    section = _section(outputs, "news2_operating_points")
    for trigger in (5, 7):
        point = section.summary[f"news2_ge_{trigger}"]
        assert 0.0 <= point["alert_rate"] <= 1.0
        assert point["news2_sensitivity"] is None or 0.0 <= point["news2_sensitivity"] <= 1.0
    assert section.summary["news2_ge_5"]["alert_rate"] >= section.summary["news2_ge_7"]["alert_rate"]


def test_the_forecast_is_scored_with_its_training_mean_and_last_value_baselines(forecast) -> None:
    request, result, outputs = forecast
    assert outputs.task == "regression" and len(outputs.frame) == len(request.dataset.frame)
    test = outputs.rows("test")
    rmse = math.sqrt(float(np.mean((outputs.y_true[test] - outputs.model[test]) ** 2)))
    assert rmse == pytest.approx(result.test_metrics["test_rmse"], rel=1e-5)
    np.testing.assert_allclose(outputs.frame["loss"], (outputs.y_true - outputs.model) ** 2)
    train_mean = float(request.dataset.frame.loc[request.dataset.frame["split"] == "train", "target"].mean())
    np.testing.assert_allclose(outputs.baseline, train_mean, rtol=1e-6)
    baselines = _section(outputs, "forecast_baselines").summary
    assert baselines["test_last_value_carried_forward_rmse"] == pytest.approx(
        result.baseline_metrics["baseline_last_value_test_rmse"], rel=1e-6)
    perturbations = _section(outputs, "perturbations").summary
    assert perturbations["metric"] == "rmse" and perturbations["clean"] == pytest.approx(rmse, rel=1e-9)
    missing_hr = next(r for r in perturbations["results"] if r["perturbation"] == "missing"
                      and r["target"] == "heart_rate")
    assert missing_hr["baseline_perturbed"] != missing_hr["baseline_clean"]  # the carried-forward value is older
    temporal = _section(outputs, "temporal_validation").summary
    assert temporal["early"] > 0 and temporal["late"] > 0


def test_an_attack_threshold_fails_closed_for_the_unattacked_sequence_models(forecast) -> None:
    _, _, outputs = forecast
    assert outputs.gate_values == {"attack_accuracy": None}
    assert any("fails closed" in limit for limit in outputs.limits)


def test_bad_input_is_refused_with_a_clear_error(deterioration, forecast, tmp_path) -> None:
    request, _, _ = deterioration
    forecast_request, _, _ = forecast
    wrong_model = dataclasses.replace(request, record={**request.record,
                                                       "model_dir": forecast_request.record["model_dir"]})
    with pytest.raises(ValueError, match="next_value_regression"):
        adapter.outputs(wrong_model)
    with pytest.raises(KeyError, match="vitals"):
        adapter.outputs(dataclasses.replace(request, tables={k: v for k, v in request.tables.items()
                                                             if k != "vitals"}))
    with pytest.raises(FileNotFoundError, match="no sequence model"):
        adapter.outputs(dataclasses.replace(request, record={**request.record, "model_dir": str(tmp_path)}))
    stale = tmp_path / "stale"
    shutil.copytree(request.record["model_dir"], stale)
    description = json.loads((stale / "model_spec.json").read_text())
    (stale / "model_spec.json").write_text(json.dumps({**description, "dataset_version": "0" * 64}))
    with pytest.raises(ValueError, match="trained on dataset version 0000"):
        adapter.outputs(dataclasses.replace(request, record={**request.record, "model_dir": str(stale)}))
    lost = request.tables["vitals"][request.tables["vitals"]["patient_pseudonym"] != request.dataset.frame[
        "patient_pseudonym"].iloc[0]]
    with pytest.raises(ValueError, match="have no rows in the vitals"):
        adapter.outputs(dataclasses.replace(request, tables={**request.tables, "vitals": lost}))
