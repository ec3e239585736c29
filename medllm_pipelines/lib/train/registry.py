"""The MLflow Model Registry: every trained model under its spec id, alias ``challenger`` (issue 11, rule 9).

A training registers what it logged (``register_model``) and points the
``challenger`` alias at it. ``champion`` is never set by a training: only
``promote_to_champion``, called by the evaluation stage's promotion gate with
a gate result that passed, moves it. Models are promoted by alias, never by
the deprecated stages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

CHALLENGER = "challenger"
CHAMPION = "champion"
FAMILIES = (
    "mlp", "gbm", "random_forest", "unet", "cnn", "lstm", "gru", "transformer_encoder", "causal_lm",
    "ensemble", "distilled", "quantised", "pruned",
)
# Version tags; `medllm models` reads them back.
FAMILY_TAG = "family"
DATASET_VERSION_TAG = "dataset_version"
SPEC_ID_TAG = "model_spec_id"
RUN_ID_TAG = "mlflow_run_id"
METRIC_TAG_PREFIXES = ("test_", "val_", "best_", "heldout_")
GATE_TAG = "promotion_gate"
# MLflow 3's UI reads this experiment tag to choose the experiment's kind: "custom_model_development" opens
# the experiment on its runs (training curves, models) instead of GenAI traces. Values are in the UI bundle
# (mlflow/server/js: CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"). Kept here, a module without
# torch, so that resources/mlflow.py sets it cheaply; tracking.py re-exports it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_TAGS: dict[str, str] = {EXPERIMENT_KIND_TAG: "custom_model_development"}


class PromotionRefused(RuntimeError):
    """``promote_to_champion`` was called without a passed gate result."""


class GateResult(Protocol):
    """What the evaluation stage's promotion gate hands over: whether it passed and why."""

    passed: bool


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model version and the aliases that point at it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    family: str

    def as_metadata(self) -> dict[str, Any]:
        return {"registered_model": self.name, "registered_version": self.version,
                "aliases": list(self.aliases), "family": self.family}


@dataclass(frozen=True)
class RegistryEntry:
    """A registered version as `medllm models` lists it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    family: str
    dataset_version: str
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def gate(self) -> dict[str, Any]:
        """The promotion gate's last decision on this version (``passed``, failed criteria), or not evaluated."""
        raw = self.tags.get(GATE_TAG)
        if not raw:
            return {"evaluated": False, "passed": False, "reason": "no evaluation of this version has run"}
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            return {"evaluated": True, "passed": False, "reason": "unreadable gate record"}
        return {"evaluated": True, "passed": record.get("passed") is True, "failed": list(record.get("failed") or []),
                "reason": record.get("reason", "")}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "aliases": list(self.aliases), "family": self.family,
                "dataset_version": self.dataset_version, "run_id": self.run_id, "metrics": dict(self.metrics),
                "gate": self.gate}


def _client(tracking_uri: str | None) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def metric_tag_name(name: str) -> str:
    """Metrics become version tags named as held-out/validation values: ``roc_auc`` -> ``val_roc_auc``."""
    return name if name.startswith(METRIC_TAG_PREFIXES) else f"val_{name}"


def register_model(
    model_uri: str,
    spec_id: str,
    *,
    family: str,
    dataset_version: str,
    metrics: Mapping[str, float] | None = None,
    tracking_uri: str | None = None,
    name: str | None = None,
) -> RegisteredModel:
    """Register ``model_uri`` as a new version of ``name`` (default: the spec id) and alias it ``challenger``.

    Variants use ``name=f"{spec_id}-{variant}"`` (t2d_risk-gbm, t2d_risk-int8).
    The version is tagged with the family, the dataset version, the spec id,
    the run that logged it and ``metrics`` (as test_/val_ tags). ``champion``
    is never touched here.
    """
    if family not in FAMILIES:
        raise ValueError(f"spec {spec_id}: unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    import mlflow

    client = _client(tracking_uri)
    model_name = name or spec_id
    try:
        client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(model_name, tags={SPEC_ID_TAG: spec_id, FAMILY_TAG: family})
    active = mlflow.active_run()
    run_id = active.info.run_id if active is not None else None
    version = client.create_model_version(model_name, model_uri, run_id=run_id)
    tags = {FAMILY_TAG: family, DATASET_VERSION_TAG: dataset_version, SPEC_ID_TAG: spec_id,
            RUN_ID_TAG: version.run_id or run_id or ""}
    for key, value in (metrics or {}).items():
        tags[metric_tag_name(key)] = repr(float(value))
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    aliases = tuple(sorted(client.get_model_version(model_name, version.version).aliases))
    return RegisteredModel(model_name, str(version.version), aliases, family)


def promote_to_champion(
    name: str, version: str, gate_result: GateResult | Mapping[str, Any] | None, *, tracking_uri: str | None = None
) -> RegisteredModel:
    """Point ``champion`` at ``name`` version ``version``: the evaluation issue's promotion gate calls this.

    Refuses (PromotionRefused) unless ``gate_result`` passed: an object with
    ``passed=True`` or a mapping with ``"passed": True``. The gate result
    (``as_metadata()`` or the mapping) is kept as the version tag
    ``promotion_gate``, so the registry says why a champion is one.
    """
    if gate_result is None:
        raise PromotionRefused(f"{name} v{version}: no promotion gate result; champion is set only by a passed gate")
    passed = gate_result.get("passed") if isinstance(gate_result, Mapping) else getattr(gate_result, "passed", None)
    if passed is not True:
        raise PromotionRefused(f"{name} v{version}: the promotion gate did not pass; champion stays where it is")
    if isinstance(gate_result, Mapping):
        record: Any = dict(gate_result)
    elif hasattr(gate_result, "as_metadata"):
        record = gate_result.as_metadata()  # type: ignore[union-attr]
    else:
        record = {"passed": True}
    client = _client(tracking_uri)
    client.set_model_version_tag(name, str(version), GATE_TAG, json.dumps(record, default=str, sort_keys=True)[:5000])
    client.set_registered_model_alias(name, CHAMPION, str(version))
    model_version = client.get_model_version(name, str(version))
    return RegisteredModel(name, str(version), tuple(sorted(model_version.aliases)),
                           model_version.tags.get(FAMILY_TAG, ""))


def record_gate_result(name: str, version: str, gate_result: Mapping[str, Any], *,
                       tracking_uri: str | None = None) -> None:
    """Keep the gate's decision (passed or not) as the version tag ``promotion_gate``; aliases are not touched.

    A failed gate calls only this: ``champion`` stays on the version it pointed at (or on none).
    """
    _client(tracking_uri).set_model_version_tag(name, str(version), GATE_TAG,
                                                json.dumps(dict(gate_result), default=str, sort_keys=True)[:5000])


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def list_registered(tracking_uri: str | None = None) -> list[RegistryEntry]:
    """Every version of every registered model, newest first per model, names in order."""
    client = _client(tracking_uri)
    entries: list[RegistryEntry] = []
    models = client.search_registered_models(max_results=1000)
    for model in sorted(models, key=lambda m: m.name):
        versions = client.search_model_versions(f"name='{model.name}'", max_results=1000)
        # search results carry no aliases; the registered model maps each alias to its version
        alias_map = dict(client.get_registered_model(model.name).aliases or {})
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            tags = dict(version.tags or {})
            metrics = {key: number for key, value in sorted(tags.items()) if key.startswith(METRIC_TAG_PREFIXES)
                       and (number := _float_or_none(value)) is not None}
            entries.append(RegistryEntry(
                name=model.name,
                version=str(version.version),
                aliases=tuple(sorted(alias for alias, v in alias_map.items() if str(v) == str(version.version))),
                family=tags.get(FAMILY_TAG, (model.tags or {}).get(FAMILY_TAG, "")),
                dataset_version=tags.get(DATASET_VERSION_TAG, ""),
                run_id=version.run_id or tags.get(RUN_ID_TAG, ""),
                metrics=metrics,
                tags=tags,
            ))
    return entries
