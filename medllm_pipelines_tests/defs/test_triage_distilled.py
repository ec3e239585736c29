"""train/triage_model_distilled without a trained teacher (row M8): the asset alone on a warehouse with a triage
dataset and no trained teacher says why nothing was distilled and its check warns. The distillation itself is tested
on the small hospital's run in test_triage_model.py (one materialisation for the teacher and the student).
"""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.defs.keys import warehouse_location


@pytest.mark.parametrize(("rows", "reason"), [
    (6, "spec triage needs 50 rows, has 6"),
    (60, "no trained triage model for dataset version "),
], ids=["below_min_rows", "teacher_not_trained"])
def test_without_a_trained_teacher_nothing_is_distilled_and_the_check_warns(tmp_path, rows: int, reason: str) -> None:
    from dagster import AssetCheckSeverity, build_asset_context

    from medllm_pipelines.defs.train.compression import triage_model_distilled
    from medllm_pipelines.resources.artifacts import ArtifactStoreResource
    from medllm_pipelines.resources.mlflow import MLflowResource
    from medllm_pipelines.resources.warehouse import WarehouseResource

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path}/warehouse.duckdb")
    texts = pd.DataFrame({"text_id": [f"t{i}" for i in range(rows)], "label": ["Cardiology"] * rows,
                          "text": ["chest pain"] * rows, "language": ["en"] * rows})
    warehouse.get().write_table(*warehouse_location(keys.TRIAGE_DATASET), texts)
    warehouse.get().write_table(*warehouse_location(keys.TRIAGE_SPLITS), texts[["text_id"]].assign(split="train"))
    artifacts = ArtifactStoreResource(deidentified_dir=str(tmp_path / "deid"), models_dir=str(tmp_path / "models"),
                                      reports_dir=str(tmp_path / "reports"))
    mlflow = MLflowResource(tracking_uri=f"sqlite:///{tmp_path}/never_opened.db", artifact_root=str(tmp_path / "mlruns"))
    result = triage_model_distilled(build_asset_context(), warehouse=warehouse, mlflow=mlflow, artifacts=artifacts)
    assert result.metadata["trained"] is False and result.metadata["reason"].startswith(reason)
    (check,) = result.check_results
    assert check.check_name == keys.CHECK_MODEL_TRAINED and check.passed is False
    assert check.severity == AssetCheckSeverity.WARN and reason in check.description
    assert not (tmp_path / "never_opened.db").exists()  # no MLflow run was opened
