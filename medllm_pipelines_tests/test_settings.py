"""The one place that reads the environment: defaults, production URLs, the Dagster instance file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medllm_pipelines.settings import EMBEDDED, PRODUCTION, load_settings, prepare_home

PG_URL = "postgresql+psycopg2://medllm:s3cret-pw@db.internal:5432/dagster"


def test_defaults_live_under_medllm_home(tmp_path):
    home = tmp_path / "state"

    settings = load_settings({"MEDLLM_HOME": str(home)})

    assert settings.home == home
    assert settings.landing_dir == home / "landing"
    assert settings.dagster_home == home / "dagster_home"
    assert settings.raw_zone_dir == home / "raw_zone"
    assert settings.warehouse_url == f"duckdb:///{home / 'warehouse' / 'medllm.duckdb'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert settings.mlflow_artifact_root == (home / "mlflow" / "artifacts").as_uri()
    assert settings.landing_consume is True
    assert settings.mode == EMBEDDED
    assert settings.uses_local_openbao
    modes = settings.component_modes()
    assert (modes["dagster_storage"], modes["warehouse"], modes["mlflow"]) == ("sqlite", "duckdb", "sqlite")
    assert modes["vault"] != "external vault"


def test_relative_home_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert load_settings({}).home == tmp_path / ".medllm"


def test_production_urls_come_from_the_environment(tmp_path):
    env = {
        "MEDLLM_HOME": str(tmp_path),
        "MEDLLM_LANDING_DIR": str(tmp_path / "sftp" / "inbox"),
        "MEDLLM_LANDING_CONSUME": "False",
        "MEDLLM_WAREHOUSE_URL": "postgresql+psycopg2://wh@db.internal:5432/medllm",
        "MLFLOW_TRACKING_URI": "https://mlflow.internal",
        "MEDLLM_MLFLOW_UI_URL": "https://mlflow.internal/",
        "MEDLLM_DAGSTER_PG_URL": PG_URL,
        "VAULT_ADDR": "https://vault.internal:8200",
        "VAULT_TOKEN": "hvs.not-a-real-token",
    }

    settings = load_settings(env)

    assert settings.landing_dir == tmp_path / "sftp" / "inbox"
    assert settings.landing_consume is False
    assert settings.warehouse_is_postgres
    assert settings.mlflow_ui_url == "https://mlflow.internal"
    assert settings.vault_token_in_env and not settings.uses_local_openbao
    assert settings.mode == PRODUCTION
    assert settings.component_modes() == {
        "dagster_storage": "postgresql",
        "warehouse": "postgresql",
        "mlflow": "tracking server",
        "vault": "external vault",
    }
    assert "hvs.not-a-real-token" not in repr(settings)


@pytest.mark.parametrize(
    "override",
    [
        {"MEDLLM_WAREHOUSE_URL": "postgresql+psycopg2://wh@db:5432/medllm"},
        {"MLFLOW_TRACKING_URI": "postgresql+psycopg2://ml@db:5432/mlflow"},
        {"MEDLLM_DAGSTER_PG_URL": PG_URL},
        {"VAULT_ADDR": "https://vault.internal:8200"},
    ],
    ids=["warehouse", "mlflow", "dagster", "vault"],
)
def test_any_external_service_means_production(tmp_path, override):
    assert load_settings({"MEDLLM_HOME": str(tmp_path), **override}).mode == PRODUCTION


@pytest.mark.parametrize(
    ("value", "consume"),
    [("true", True), ("1", True), (" YES ", True), ("false", False), ("0", False), ("no", False)],
)
def test_landing_consume_flag(tmp_path, value, consume):
    assert load_settings({"MEDLLM_HOME": str(tmp_path), "MEDLLM_LANDING_CONSUME": value}).landing_consume is consume


def test_prepare_home_writes_an_embedded_sqlite_instance(tmp_path):
    settings = load_settings({"MEDLLM_HOME": str(tmp_path / "home")})

    prepare_home(settings)

    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert config["storage"] == {"sqlite": {"base_dir": str(settings.dagster_home / "storage")}}
    for folder in (settings.landing_dir, settings.raw_zone_dir, settings.models_dir, settings.reports_dir):
        assert folder.is_dir()
    assert (settings.services_dir.stat().st_mode & 0o777) == 0o700
    assert (settings.home / "warehouse").is_dir() and (settings.home / "mlflow" / "artifacts").is_dir()


def test_prepare_home_with_postgres_writes_the_template_without_the_url(tmp_path):
    settings = load_settings({"MEDLLM_HOME": str(tmp_path / "home"), "MEDLLM_DAGSTER_PG_URL": PG_URL})

    prepare_home(settings)

    text = (settings.dagster_home / "dagster.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "MEDLLM_DAGSTER_PG_URL"}
    assert "s3cret-pw" not in text and "db.internal" not in text


def test_prepare_home_switches_between_modes_and_is_idempotent(tmp_path):
    home = str(tmp_path / "home")
    embedded = load_settings({"MEDLLM_HOME": home})
    production = load_settings({"MEDLLM_HOME": home, "MEDLLM_DAGSTER_PG_URL": PG_URL})
    yaml_path = embedded.dagster_home / "dagster.yaml"

    prepare_home(production)
    prepare_home(embedded)
    first = yaml_path.stat().st_mtime_ns
    prepare_home(embedded)

    assert "sqlite" in yaml.safe_load(yaml_path.read_text())["storage"]
    assert yaml_path.stat().st_mtime_ns == first  # unchanged content is not rewritten


@pytest.mark.parametrize("folder", ["my home", "医疗数据"], ids=["space", "chinese"])
def test_prepare_home_in_a_folder_whose_name_needs_escaping_in_a_uri(tmp_path, folder):
    settings = load_settings({"MEDLLM_HOME": str(tmp_path / folder)})

    prepare_home(settings)

    assert (tmp_path / folder / "mlflow" / "artifacts").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [folder]  # no percent-encoded twin
    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert Path(config["storage"]["sqlite"]["base_dir"]) == settings.dagster_home / "storage"
