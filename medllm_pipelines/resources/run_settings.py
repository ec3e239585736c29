"""Run-time choices an asset needs (purpose, k, l, privacy budget, training size), bound by ``make_definitions(settings)``.

Assets read them from this resource instead of calling ``load_settings()``:
the Definitions a test builds with its own Settings are then the settings
its assets see, and Dagster shows the values on the resource's page.
"""

from __future__ import annotations

from dagster import ConfigurableResource


class RunSettingsResource(ConfigurableResource):
    """What the environment decided for this deployment; no secrets here."""

    purpose: str | None = None  # processing purpose (MEDLLM_PURPOSE); None: the policy's default_purpose
    k_anonymity_k: int = 5
    l_diversity_l: int = 2
    dp_dataset: str = "deidentified-cohort"
    dp_epsilon_budget: float = 10.0
    dp_epsilon_per_release: float = 1.0
    sources_file: str = ""  # source-institution registry; "" means the packaged one
    training_size: str = "demo"  # MEDLLM_TRAINING_SIZE: which of a spec's sizes trains ("demo" or "full")
    training_process: str = "in_process"  # MEDLLM_TRAINING_PROCESS: "in_process" or "subprocess" (Dagster Pipes)
