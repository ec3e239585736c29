"""Model specs are versioned YAML files the curate stage builds from."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.curate import spec as spec_module
from medllm_pipelines.lib.curate.spec import load_spec


def test_t2d_spec_declares_target_features_and_splits():
    spec = load_spec("t2d_risk")

    assert spec.target_icd10_category == "E11"
    assert spec.split_ratios == (0.70, 0.15, 0.15)
    assert spec.feature_columns[0] == "age_years" and spec.feature_columns[-1] == "sex"
    assert spec.aggregation == "median"
    assert spec.as_metadata()["model_spec"] == f"t2d_risk v{spec.version}"


def test_split_ratios_must_sum_to_one(tmp_path, monkeypatch):
    text = (spec_module.SPECS_DIR / "t2d_risk.yaml").read_text().replace("test: 0.15", "test: 0.25")
    (tmp_path / "bad_ratios_spec.yaml").write_text(text)
    monkeypatch.setattr(spec_module, "SPECS_DIR", tmp_path)

    with pytest.raises(ValueError, match="sum to 1"):
        load_spec("bad_ratios_spec")


def test_every_spec_file_loads_and_declares_its_dataset():
    from medllm_pipelines.lib.curate.spec import spec_ids

    assert {"t2d_risk", "lesion_segmentation"} <= set(spec_ids())
    for spec_id in spec_ids():
        spec = load_spec(spec_id)
        described = spec.describe()
        assert described["scenario"] and described["task"] and described["metrics"] and described["data_needs"]
        assert described["split"]["group_by"] == "patient_pseudonym"


def test_specs_declare_split_strategy_and_preprocessing():
    t2d = load_spec("t2d_risk")
    assert t2d.split_config.k_folds == 5 and t2d.split_config.together == ("near_duplicate_key",)
    assert t2d.preprocessing.scaling == "zscore" and t2d.preprocessing.selection == "univariate"
    lesion = load_spec("lesion_segmentation")
    assert lesion.target_icd10_category is None and lesion.preprocessing is None
    assert lesion.split_config.stratify_by == "lesion" and "study_key" in lesion.split_config.together


def test_unknown_split_strategy_is_refused(tmp_path, monkeypatch):
    text = (spec_module.SPECS_DIR / "t2d_risk.yaml").read_text().replace("strategy: grouped_stratified", "strategy: lottery")
    (tmp_path / "bad_strategy_spec.yaml").write_text(text)
    monkeypatch.setattr(spec_module, "SPECS_DIR", tmp_path)
    with pytest.raises(ValueError, match="strategy"):
        load_spec("bad_strategy_spec")


@pytest.mark.parametrize("rows", [0, 7, 49, 50, 1000])
def test_data_needs_name_the_spec_and_both_counts(rows: int) -> None:
    from medllm_pipelines.lib.curate.spec import load_spec

    spec = load_spec("t2d_risk")
    needs = spec.needs_met_by(rows)
    assert needs.met == (rows >= spec.min_rows)
    meta = needs.as_metadata()
    assert meta["data_needs_met"] is needs.met and meta["rows_available"] == rows
    if not needs.met:
        assert meta["reason"] == f"spec t2d_risk needs {spec.min_rows} rows, has {rows}"
    else:
        assert "reason" not in meta
