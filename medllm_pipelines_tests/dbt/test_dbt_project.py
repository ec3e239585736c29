"""The dbt project (dbt/) on both warehouse backends, and its place in the Dagster graph.

A small warehouse is written with the same writer the Python stages use
(``Warehouse.write_table``) and the same column sets (ledger, quarantine log,
consent registry builders), then ``dbt build`` runs models and tests on DuckDB
and on a throwaway PostgreSQL database. Marts are checked against what the
source rows imply; a broken key and a cohort/label disagreement must fail the
build; the dbt assets must hang off the Python assets in the asset graph.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medllm_pipelines.lib.common.records import QuarantineRecord, quarantine_frame
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.curate import dbt_project
from medllm_pipelines.lib.deidentify.consent import REGISTRY_COLUMNS
from medllm_pipelines.lib.ingest.intake import LEDGER_COLUMNS
from medllm_pipelines_tests.postgres import throwaway_database

COHORTS = {"type2_diabetes": "E11", "hypertension": "I10", "hyperlipidaemia": "E78"}

# --- a small, deliberate warehouse ---------------------------------------------------
# p1 is known at two institutions (one pseudonym); consent: p1, p2 granted, p3
# withdrawn, p4 refused, p5 has no consent record at all.
PATIENTS = pd.DataFrame(
    [
        ("p_1", "hzsf", "male", "45-49"),
        ("p_1", "rvic", "male", "50-54"),
        ("p_2", "hzsf", "female", "30-34"),
        ("p_3", "rvic", "female", "90+"),
        ("p_4", "jhsq", "unknown", "60-64"),
        ("p_5", "hzsf", "male", "20-24"),
    ],
    columns=["patient_pseudonym", "institution", "sex", "age_band"],
)
CONSENT = pd.DataFrame(
    [
        ("p_1", "granted", 2024, 1),
        ("p_2", "granted", 2023, 2),
        ("p_3", "withdrawn", 2025, 2),
        ("p_4", "refused", 2022, 1),
    ],
    columns=REGISTRY_COLUMNS,
)
CONDITIONS = pd.DataFrame(
    [
        ("p_1", "hzsf", "E11.9", "E11", "active", 2019),
        ("p_1", "rvic", "E11.65", "E11", "active", 2021),
        ("p_1", "rvic", "I10", "I10", "active", 2020),
        ("p_2", "hzsf", "E78.5", "E78", "active", 2022),
        ("p_2", "hzsf", "J06.9", "J06", "resolved", 2023),
        ("p_3", "rvic", "E11.9", "E11", "active", 2018),  # withdrawn consent: no cohort
        ("p_4", "jhsq", "I10", "I10", "active", 2017),  # refused consent: no cohort
        ("p_5", "hzsf", "E11.9", "E11", "active", 2024),  # no consent record: no cohort
    ],
    columns=["patient_pseudonym", "institution", "icd10", "icd10_category", "clinical_status", "onset_year"],
)
OBSERVATIONS = pd.DataFrame(
    [
        ("p_1", "hzsf", "hba1c", "4548-4", 7.0, "%", 2022),
        ("p_1", "rvic", "hba1c", "4548-4", 8.0, "%", 2023),
        ("p_1", "rvic", "hba1c", "4548-4", 8.4, "%", 2023),
        ("p_2", "hzsf", "systolic_bp", "8480-6", 120.0, "mm[Hg]", 2024),
        ("p_3", "rvic", "bmi", "39156-5", 31.5, "kg/m2", 2021),
    ],
    columns=["patient_pseudonym", "institution", "concept", "loinc", "value", "unit", "effective_year"],
)
IMAGES = pd.DataFrame(
    [("img_1", "p_1", "hzsf", "CT", 64, 64, 2024, "img_1.npy")],
    columns=["image_id", "patient_pseudonym", "institution", "modality", "rows", "columns", "study_year", "pixel_file"],
)
LABELS = pd.DataFrame(
    [("p_1", 1, "icd10:E11", "hzsf,rvic"), ("p_2", 0, "icd10:E11", "hzsf")],
    columns=["patient_pseudonym", "label", "label_source", "institutions"],
)


def _ledger_row(sha: str, institution: str | None, status: str, reason: str | None) -> dict:
    return {
        "content_sha256": sha,
        "institution": institution,
        "file_kind": "fhir_bundle" if status == "stored" else "unsupported",
        "size_bytes": 1000,
        "status": status,
        "reason_code": reason,
        "source_path_ciphertext": "vault:v1:AAAA",
        "landed_at": "2026-11-28T18:48:53.816666+00:00",
        "dagster_run_id": "run-1",
    }


LEDGER = pd.DataFrame(
    [
        _ledger_row("a" * 64, "hzsf", "stored", None),
        _ledger_row("b" * 64, "hzsf", "stored", None),
        _ledger_row("c" * 64, "hzsf", "quarantined", "unsupported_file_type"),
        _ledger_row("d" * 64, "rvic", "stored", None),
        _ledger_row("e" * 64, None, "quarantined", "unknown_source"),
    ],
    columns=LEDGER_COLUMNS,
)
QUARANTINE = quarantine_frame(
    [
        QuarantineRecord("ingest", "ingest/landed_files", "hzsf", "c" * 64, None, None, "unsupported_file_type", "r"),
        QuarantineRecord("ingest", "ingest/landed_files", None, "e" * 64, None, None, "unknown_source", "r"),
        QuarantineRecord("ingest", "ingest/fhir_resources", "hzsf", "a" * 64, 3, "Patient", "invalid_resource", "r"),
        QuarantineRecord(
            "ingest", "ingest/fhir_resources", "hzsf", "a" * 64, 7, "Observation", "invalid_resource", "r"
        ),
        QuarantineRecord(
            "quality", "quality/clean_conditions", "rvic", "d" * 64, 2, "Condition", "unknown_patient", "r"
        ),
        QuarantineRecord("quality", "quality/clean_patients", "jhsq", "f" * 64, 1, "Patient", "a_new_reason", "r"),
    ]
)

SOURCES = {
    ("deidentify", "patients"): PATIENTS,
    ("deidentify", "consent_registry"): CONSENT,
    ("deidentify", "conditions"): CONDITIONS,
    ("deidentify", "observations"): OBSERVATIONS,
    ("deidentify", "images"): IMAGES,
    ("label", "diabetes_labels"): LABELS,
    ("audit", "file_ledger"): LEDGER,
    ("audit", "quarantine"): QUARANTINE,
}


def write_sources(warehouse: Warehouse, overrides: dict[tuple[str, str], pd.DataFrame] | None = None) -> None:
    for (schema, table), frame in {**SOURCES, **(overrides or {})}.items():
        warehouse.write_table(schema, table, frame)


# --- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def dbt_manifest() -> Path:
    """dbt/target/manifest.json, (re)generated when missing or older than the project."""
    return dbt_project.ensure_manifest(dbt_project.dbt_connection("duckdb:///unused.duckdb"))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database on the local server, dropped afterwards."""
    with throwaway_database("medllm_dbt") as url:
        yield url


def dbt_build(url: str, target_dir: Path, *, check: bool = True) -> dict:
    """``dbt build`` against ``url``; returns the exit code and {node name: status} from run_results.json."""
    completed = dbt_project.run_dbt(
        ["build"],
        dbt_project.dbt_connection(url),
        target_path=target_dir,
        environ={**os.environ, "DBT_LOG_PATH": str(target_dir)},
        check=False,
    )
    results = json.loads((target_dir / "run_results.json").read_text())["results"]
    statuses = {r["unique_id"].split(".")[2]: r["status"] for r in results}  # <type>.<project>.<name>[.<hash>]
    if check and completed.returncode != 0:
        failed = {name: status for name, status in statuses.items() if status not in ("success", "pass")}
        raise AssertionError(f"dbt build failed: {failed}\n{completed.stdout[-3000:]}")
    return {"returncode": completed.returncode, "statuses": statuses}


@pytest.fixture(scope="module")
def dagster_duckdb_run(tmp_path_factory: pytest.TempPathFactory, dbt_manifest: Path) -> tuple[Warehouse, Any]:
    """The DuckDB build goes through Dagster: the dbt assets materialised in-process, as a run does."""
    from dagster import materialize

    from medllm_pipelines.defs.curate import dbt as curate_dbt
    from medllm_pipelines.defs.resources import build_dbt_resources
    from medllm_pipelines.resources.warehouse import WarehouseResource
    from medllm_pipelines.settings import load_settings

    home = tmp_path_factory.mktemp("home")
    url = f"duckdb:///{home / 'warehouse' / 'medllm.duckdb'}"
    warehouse = Warehouse(url)
    write_sources(warehouse)
    settings = load_settings({"MEDLLM_HOME": str(home), "MEDLLM_WAREHOUSE_URL": url})
    result = materialize(
        curate_dbt.ASSETS,
        resources={**build_dbt_resources(settings, environ={}), "warehouse": WarehouseResource(url=url)},
        raise_on_error=False,
    )
    return warehouse, result


@pytest.fixture(scope="module")
def built_duckdb(dagster_duckdb_run: tuple[Warehouse, Any]) -> Warehouse:
    warehouse, result = dagster_duckdb_run
    assert result.success, "dbt build through Dagster failed"
    return warehouse


@pytest.fixture(scope="module")
def built_postgres(
    postgres_url: str, dbt_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouse]:
    warehouse = Warehouse(postgres_url)
    write_sources(warehouse)
    dbt_build(postgres_url, tmp_path_factory.mktemp("dbt_target"))
    yield warehouse
    warehouse.dispose()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def built(request: pytest.FixtureRequest) -> Warehouse:
    return request.getfixturevalue(f"built_{request.param}")


def mart(warehouse: Warehouse, name: str, key: str) -> pd.DataFrame:
    return warehouse.read_table("curate", name).sort_values(key).reset_index(drop=True)


# --- marts, on both backends ---------------------------------------------------------
def test_cohorts_hold_exactly_the_diagnosed_persons_with_granted_consent(built: Warehouse) -> None:
    granted = set(CONSENT.loc[CONSENT["consent_status"] == "granted", "patient_pseudonym"])
    for cohort, category in COHORTS.items():
        diagnosed = set(CONDITIONS.loc[CONDITIONS["icd10_category"] == category, "patient_pseudonym"])
        members = mart(built, f"cohort_{cohort}", "patient_pseudonym")
        assert set(members["patient_pseudonym"]) == diagnosed & granted, cohort
        assert (members["consent_status"] == "granted").all()
    # p_3 (withdrawn), p_5 (no consent record) have E11 and stay out; p_1 has it at two institutions.
    diabetes = mart(built, "cohort_type2_diabetes", "patient_pseudonym").set_index("patient_pseudonym")
    assert list(diabetes.index) == ["p_1"]
    assert diabetes.loc["p_1", "condition_records"] == 2
    assert diabetes.loc["p_1", "institutions_recording"] == 2
    assert diabetes.loc["p_1", "icd10_codes"] == "E11.65,E11.9"
    assert diabetes.loc["p_1", "first_onset_year"] == 2019


def test_patient_features_has_one_row_per_person_with_reconciled_values(built: Warehouse) -> None:
    features = mart(built, "patient_features", "patient_pseudonym").set_index("patient_pseudonym")
    assert sorted(features.index) == sorted(PATIENTS["patient_pseudonym"].unique())
    p1 = features.loc["p_1"]
    assert p1["institutions_count"] == 2 and p1["institutions"] == "hzsf,rvic"
    assert p1["age_band"] == "50-54" and p1["approx_age_years"] == 52.5  # the oldest (most recent) band
    assert p1["hba1c_median"] == pytest.approx(8.0)  # median of 7.0, 8.0, 8.4
    assert p1["hba1c_latest"] == pytest.approx(8.2)  # mean of the latest year's 8.0, 8.4
    assert bool(p1["has_type2_diabetes"]) and bool(p1["has_hypertension"]) and not bool(p1["has_hyperlipidaemia"])
    assert p1["images"] == 1 and p1["observation_records"] == 3 and p1["condition_records"] == 3
    assert features.loc["p_3", "age_band"] == "90+" and features.loc["p_3", "approx_age_years"] == 92.5
    assert features.loc["p_5", "consent_status"] == "unknown" and not bool(features.loc["p_5", "is_consented"])
    assert features.loc["p_4", "consent_status"] == "refused"
    assert pd.isna(features.loc["p_4", "hba1c_median"])


def test_quality_summary_per_institution_sums_to_the_audit_tables(built: Warehouse) -> None:
    summary = mart(built, "institution_quality_summary", "institution").set_index("institution")
    assert summary["files_landed"].sum() == len(LEDGER)
    assert summary["files_quarantined"].sum() == int((LEDGER["status"] == "quarantined").sum())
    assert summary["records_quarantined"].sum() == len(QUARANTINE)
    ledger_by = LEDGER.assign(institution=LEDGER["institution"].fillna("(none)")).groupby("institution").size()
    assert summary["files_landed"].to_dict() == {**dict.fromkeys(summary.index, 0), **ledger_by.to_dict()}
    hzsf = summary.loc["hzsf"]
    assert (hzsf["files_landed"], hzsf["files_stored"], hzsf["files_quarantined"]) == (3, 2, 1)
    assert (hzsf["quarantined_invalid_resource"], hzsf["quarantined_unsupported_file_type"]) == (2, 1)
    assert hzsf["records_quarantined_ingest"] == 3 and hzsf["records_quarantined_quality"] == 0
    # persons at hzsf: p_1 (granted), p_2 (granted), p_5 (no record); p_1 also counts at rvic
    assert (hzsf["persons"], hzsf["consent_granted"], hzsf["consent_unknown"]) == (3, 2, 1)
    assert (summary.loc["rvic", "persons"], summary.loc["rvic", "consent_withdrawn"]) == (2, 1)
    assert summary.loc["(none)", "quarantined_unknown_source"] == 1  # a file outside any source folder
    assert summary.loc["jhsq", "quarantined_other_reason"] == 1  # a code not declared in vars


@pytest.mark.postgres
def test_duckdb_and_postgres_build_the_same_marts(built_duckdb: Warehouse, built_postgres: Warehouse) -> None:
    for name, key in [
        ("patient_features", "patient_pseudonym"),
        ("institution_quality_summary", "institution"),
        *[(f"cohort_{c}", "patient_pseudonym") for c in COHORTS],
    ]:
        duck, pg = comparable(mart(built_duckdb, name, key)), comparable(mart(built_postgres, name, key))
        assert list(duck.columns) == list(pg.columns), name
        pd.testing.assert_frame_equal(duck, pg, check_exact=False, rtol=1e-12, obj=name)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Same values, same pandas types: the two drivers differ in integer width and datetime resolution."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if series.isna().all():
            out[column] = pd.Series(float("nan"), index=series.index)
        elif pd.api.types.is_datetime64_any_dtype(series):
            out[column] = series.astype("datetime64[ns]")
        elif pd.api.types.is_bool_dtype(series):
            out[column] = series.astype(bool)
        elif pd.api.types.is_numeric_dtype(series):
            out[column] = series.astype("float64")
        else:
            out[column] = series.astype(object).where(series.notna(), None)
    return out


# --- the tests catch broken data -------------------------------------------------------
def test_a_broken_key_and_a_cohort_label_mismatch_fail_the_build(tmp_path: Path, dbt_manifest: Path) -> None:
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'medllm.duckdb'}")
    duplicated_file = pd.concat([LEDGER, LEDGER.iloc[[0]]], ignore_index=True)  # one file ledgered twice
    wrong_labels = LABELS.assign(label=[1, 1])  # p_2 labelled E11-positive without an E11 diagnosis
    write_sources(warehouse, {("audit", "file_ledger"): duplicated_file, ("label", "diabetes_labels"): wrong_labels})

    outcome = dbt_build(warehouse.url, tmp_path / "target", check=False)

    statuses = outcome["statuses"]
    assert outcome["returncode"] != 0
    assert statuses["unique_stg_audit__file_ledger_file_sha256"] == "fail"
    assert statuses["assert_type2_diabetes_cohort_matches_diabetes_labels"] == "fail"
    assert statuses["institution_quality_summary"] == "skipped"  # downstream of the failed key test
    assert statuses["patient_features"] == "success"  # unaffected branch still builds


# --- Dagster ---------------------------------------------------------------------------
def test_dbt_models_are_curate_assets_wired_to_the_python_assets(dbt_manifest: Path) -> None:
    from dagster import Definitions

    from medllm_pipelines import definitions
    from medllm_pipelines.defs.curate import dbt as curate_dbt
    from medllm_pipelines.defs.resources import build_dbt_resources, build_resources
    from medllm_pipelines.settings import load_settings

    settings = load_settings({})
    defs = Definitions(  # what definitions.py holds once the marts are registered
        assets=[*definitions.ALL_ASSETS, *curate_dbt.ASSETS],
        asset_checks=definitions.ALL_CHECKS,
        resources={**build_resources(settings, environ={}), **build_dbt_resources(settings, environ={})},
    )
    graph = defs.resolve_asset_graph()
    dbt_keys = {k.to_user_string() for k in curate_dbt.curate_dbt_models.keys}
    models = {
        n["name"] for n in json.loads(dbt_manifest.read_text())["nodes"].values() if n["resource_type"] == "model"
    }
    assert dbt_keys == {f"curate/{m}" for m in models}
    assert {
        "curate/patient_features",
        "curate/institution_quality_summary",
        "curate/cohort_type2_diabetes",
        "curate/cohort_hypertension",
        "curate/cohort_hyperlipidaemia",
    } <= dbt_keys

    defined = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    parents = {k: sorted(p.to_user_string() for p in graph.get(k).parent_keys) for k in curate_dbt.curate_dbt_models.keys}
    for key, deps in parents.items():
        assert graph.get(key).group_name == "curate"
        assert set(deps) <= defined, f"{key.to_user_string()} depends on assets nobody defines: {set(deps) - defined}"
    by_name = {k.to_user_string(): v for k, v in parents.items()}
    assert by_name["curate/stg_deidentify__patients"] == ["deidentify/patients"]
    assert by_name["curate/stg_label__diabetes_labels"] == ["label/diabetes_labels"]
    assert by_name["curate/stg_audit__file_ledger"] == ["ingest/landed_files"]
    assert {"ingest/landed_files", "ingest/patients", "quality/clean_observations"} <= set(
        by_name["curate/stg_audit__quarantine"]
    )
    checks = [graph.get_check_spec(k) for k in graph.asset_check_keys if k.asset_key in curate_dbt.curate_dbt_models.keys]
    assert len(checks) >= 50 and all(c.blocking for c in checks)


def test_materialising_the_dbt_assets_in_dagster(dagster_duckdb_run: tuple[Warehouse, Any]) -> None:
    from dagster import AssetKey

    _, result = dagster_duckdb_run
    assert result.success
    materializations = [e.materialization for e in result.get_asset_materialization_events()]
    meta = {m.asset_key: m.metadata for m in materializations}
    features = meta[AssetKey(["curate", "patient_features"])]
    assert features["dagster/row_count"].value == PATIENTS["patient_pseudonym"].nunique()
    assert features["warehouse_table"].value == "curate.patient_features"
    assert features["dbt_target"].value == "duckdb"
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) >= 50 and all(e.passed for e in evaluations)
    assert not any((dbt_project.DBT_PROJECT_DIR / "target" / "runs").glob(f"{result.run_id[:8]}-*"))  # cleaned up


@pytest.mark.postgres
def test_a_stage_can_rewrite_its_table_after_dbt_built_views_on_it(built_postgres: Warehouse) -> None:
    built_postgres.write_table("deidentify", "patients", PATIENTS)
    assert len(built_postgres.read_table("deidentify", "patients")) == len(PATIENTS)


# --- connection mapping (no dbt run) ----------------------------------------------------
@pytest.mark.parametrize(
    ("url", "target", "expected"),
    [
        ("duckdb:////data/wh/medllm.duckdb", "duckdb", {dbt_project.DUCKDB_PATH_ENV: "/data/wh/medllm.duckdb"}),
        (
            "postgresql+psycopg2://medllm:p%40ss%2Fw0rd@db.internal:6543/warehouse?sslmode=require",
            "postgres",
            {
                dbt_project.PG_HOST_ENV: "db.internal",
                dbt_project.PG_PORT_ENV: "6543",
                dbt_project.PG_USER_ENV: "medllm",
                dbt_project.PG_PASSWORD_ENV: "p@ss/w0rd",
                dbt_project.PG_DBNAME_ENV: "warehouse",
                dbt_project.PG_SSLMODE_ENV: "require",
            },
        ),
        (
            "postgresql+psycopg2://postgres@127.0.0.1/medllm",
            "postgres",
            {dbt_project.PG_PORT_ENV: "5432", dbt_project.PG_PASSWORD_ENV: "", dbt_project.PG_SSLMODE_ENV: "prefer"},
        ),
    ],
)
def test_warehouse_url_maps_to_the_dbt_target_and_its_environment(url: str, target: str, expected: dict) -> None:
    connection = dbt_project.dbt_connection(url)
    assert connection.target == target
    assert expected.items() <= connection.env.items()


def test_the_password_never_shows_in_the_connection_repr() -> None:
    connection = dbt_project.dbt_connection("postgresql+psycopg2://u:hunter2@h:5432/d")
    assert "hunter2" not in repr(connection)


def test_profiles_read_every_connection_variable_and_hold_no_value() -> None:
    profiles = (dbt_project.DBT_PROJECT_DIR / "profiles.yml").read_text()
    for name in dbt_project.CONNECTION_ENV_KEYS:
        assert f"env_var('{name}'" in profiles, name
    assert "password: \"{{ env_var('DBT_ENV_SECRET_" in profiles  # scrubbed from dbt's logs


def test_missing_manifest_fails_with_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(dbt_project.DbtManifestMissingError, match="make dbt-parse"):
        dbt_project.require_manifest(tmp_path / "target" / "manifest.json")
