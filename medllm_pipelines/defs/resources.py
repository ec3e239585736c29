"""Resources built from the resolved settings: one code path, two modes.

Values that may hold secrets (Vault token, database URLs with passwords) are
bound as ``EnvVar`` when they come from the environment, so Dagster resolves
them at run time and never shows them in the UI or metadata.
"""


import os
from collections.abc import Mapping
from typing import Any

from dagster import EnvVar

from medllm_pipelines.lib.curate import dbt_project as project
from medllm_pipelines.resources.artifacts import ArtifactStoreResource
from medllm_pipelines.resources.dbt import MedllmDbtCliResource
from medllm_pipelines.resources.landing import LandingZone
from medllm_pipelines.resources.mlflow import MLflowResource
from medllm_pipelines.resources.raw_zone import RawZoneResource
from medllm_pipelines.resources.run_settings import RunSettingsResource
from medllm_pipelines.resources.serving_store import ServingStoreResource
from medllm_pipelines.resources.vault import VaultResource
from medllm_pipelines.resources.warehouse import WarehouseResource
from medllm_pipelines.settings import Settings, serving_settings


def vault_resource(settings: Settings, **overrides: Any) -> VaultResource:
    """The project's OpenBao (via its state file) or the configured Vault, token bound as ``EnvVar``."""
    if settings.uses_local_openbao:
        return VaultResource(token_file=str(settings.openbao_state_file), **overrides)
    return VaultResource(
        addr=settings.vault_addr,
        token=EnvVar("VAULT_TOKEN") if settings.vault_token_in_env else None,
        ca_cert=settings.vault_cacert,
        **overrides,
    )


def run_settings_resource(settings: Settings) -> RunSettingsResource:
    """The run-time choices assets read (purpose, k, l, privacy budget, training size), from the bound settings."""
    return RunSettingsResource(
        purpose=settings.purpose,
        k_anonymity_k=settings.k_anonymity_k,
        l_diversity_l=settings.l_diversity_l,
        dp_dataset=settings.dp_dataset,
        dp_epsilon_budget=settings.dp_epsilon_budget,
        dp_epsilon_per_release=settings.dp_epsilon_per_release,
        sources_file=str(settings.sources_file or ""),
        training_size=settings.training_size,
        training_process=settings.training_process,
    )


def serving_store_resource(settings: Settings, vault: VaultResource,
                           environ: Mapping[str, str] | None = None) -> ServingStoreResource:
    """The REST service's document store (clinicians' feedback), with the service's URL and Vault data key."""
    env = os.environ if environ is None else environ
    from_env = bool(env.get("MEDLLM_SERVE_STORE_URL"))
    url = EnvVar("MEDLLM_SERVE_STORE_URL") if from_env else serving_settings(settings, env).store_url
    return ServingStoreResource(store_url=url, vault=vault)


def build_resources(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    vault = vault_resource(settings)
    warehouse = WarehouseResource(
        url=EnvVar("MEDLLM_WAREHOUSE_URL") if env.get("MEDLLM_WAREHOUSE_URL") else settings.warehouse_url
    )
    mlflow = MLflowResource(
        tracking_uri=EnvVar("MLFLOW_TRACKING_URI") if env.get("MLFLOW_TRACKING_URI") else settings.mlflow_tracking_uri,
        artifact_root=settings.mlflow_artifact_root,
        ui_url=settings.mlflow_ui_url,
    )
    return {
        "run_settings": run_settings_resource(settings),
        "vault": vault,
        "warehouse": warehouse,
        "mlflow": mlflow,
        "landing_zone": LandingZone(
            path=str(settings.landing_dir),
            consume=settings.landing_consume,
            sources_file=settings.sources_file,
            first_arrival_file=str(settings.first_arrival_file),
        ),
        "raw_zone": RawZoneResource(path=str(settings.raw_zone_dir), vault=vault, audit_log=str(settings.audit_log_file)),
        "artifacts": ArtifactStoreResource(
            deidentified_dir=str(settings.deidentified_dir),
            models_dir=str(settings.models_dir),
            reports_dir=str(settings.reports_dir),
            governance_dir=str(settings.governance_dir),
        ),
        "serving_store": serving_store_resource(settings, vault, env),
    }


def dbt_resource(settings: Settings, environ: Mapping[str, str] | None = None) -> MedllmDbtCliResource:
    """The dbt resource for ``settings``: target ``duckdb`` or ``postgres`` from the warehouse URL.

    A URL that came from ``MEDLLM_WAREHOUSE_URL`` is bound as ``EnvVar`` so a
    password in it is resolved at run time and never shown in the UI.
    """
    env = os.environ if environ is None else environ
    from_env = env.get("MEDLLM_WAREHOUSE_URL") == settings.warehouse_url
    return MedllmDbtCliResource(
        project_dir=os.fspath(project.DBT_PROJECT_DIR),
        profiles_dir=os.fspath(project.DBT_PROFILES_DIR),
        target=project.dbt_connection(settings.warehouse_url).target,
        dbt_executable=project.dbt_executable(),
        warehouse_url=EnvVar("MEDLLM_WAREHOUSE_URL") if from_env else settings.warehouse_url,
    )


def build_dbt_resources(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Resources the dbt assets need beyond ``build_resources``: ``{"dbt": ...}``."""
    return {"dbt": dbt_resource(settings, environ)}
