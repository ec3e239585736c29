"""The scenario services of the models being served, rebuilt when a model version changes (rolling updates).

Each accessor returns the service for the version live now; a request keeps the object it got, so a swap in the
middle of a request never mixes versions. A scenario whose model has no champion still serves with its
documented fallback (knowledge graph only, extractive drafting, rules only) and says so in its ``model`` field.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from medllm_pipelines.serving.context import ServiceContext

__all__ = ["diagnosis_service", "ehr_service", "imaging_service", "text_deidentifier", "triage_service", "warm"]

_lock = threading.RLock()  # builders call other accessors


def _cached(ctx: ServiceContext, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    found = ctx.scenario_cache.get(key)  # type: ignore[call-overload]
    if found is not None:
        return found
    with _lock:
        found = ctx.scenario_cache.get(key)  # type: ignore[call-overload]
        if found is None:
            for stale in [k for k in ctx.scenario_cache if k[0] == key[0]]:  # type: ignore[index]
                del ctx.scenario_cache[stale]
            found = build()
            ctx.scenario_cache[key] = found  # type: ignore[index]
    return found


def _version(ctx: ServiceContext, name: str) -> tuple[Any, str | None]:
    loaded = ctx.models.get(name)
    return loaded, (loaded.version if loaded else None)


def text_deidentifier(ctx: ServiceContext) -> Callable[[str], str]:
    """The project's text de-identifier (validated patterns and lexicons), identifiers -> ``[LABEL]``."""

    def build() -> Callable[[str], str]:
        from medllm_pipelines.lib.deidentify.text import build_detector, deidentify_text, placeholder

        detector = build_detector()
        return lambda text: deidentify_text(text, detector=detector, surrogate_for=placeholder)[0]

    return _cached(ctx, ("deidentifier",), build)


# A speaker label at the start of a transcript line ("Doctor:", "Pt:", "医生：") is structure, not a name.
_SPEAKER = re.compile(r"^(\s*(?:doctor|dr\.?|patient|pt\.?|nurse|clinician|physician|mother|father|parent|"
                      r"医生|大夫|患者|病人|护士|家属)\s*[:：]\s*)(.*)$", re.IGNORECASE)


def dialogue_deidentifier(ctx: ServiceContext) -> Callable[[str], str]:
    """The text de-identifier applied to what each line says, speaker labels kept (a transcript or dictation)."""
    deidentify = text_deidentifier(ctx)

    def apply(text: str) -> str:
        lines = []
        for line in text.split("\n"):
            match = _SPEAKER.match(line)
            lines.append(match.group(1) + deidentify(match.group(2)) if match else deidentify(line))
        return "\n".join(lines)

    return apply


# The raw zone's patients table (defs/keys.py: raw_table_name(RAW_PATIENTS)); serving does not import the wiring.
RAW_PATIENTS_TABLE = "ingest_patients"


def leak_checker(ctx: ServiceContext) -> Callable[[str], list[str]]:
    """Kinds of raw-zone identifiers (names, MRNs, phones...) found in a text; read once per worker, audited."""

    def build() -> Callable[[str], list[str]]:
        from medllm_pipelines.lib.security.exports import raw_zone_needles
        from medllm_pipelines.lib.security.leak_scan import IdentifierMatcher
        from medllm_pipelines.lib.security.raw_zone import RawZone

        needles = raw_zone_needles(RawZone(ctx.settings.raw_zone_dir, ctx.keys), RAW_PATIENTS_TABLE)
        ctx.audit.record(actor="medllm-serve", role="none", action="serve.read_raw_identifiers",
                         resource=RAW_PATIENTS_TABLE, outcome="succeeded",
                         reason="identifier values for the leak scan of generated drafts (held in memory only)",
                         details={"kinds": sorted(needles), "values": sum(len(v) for v in needles.values())})
        if not needles:
            return lambda text: []
        matcher = IdentifierMatcher(needles)
        return lambda text: sorted(matcher.count(text))

    return _cached(ctx, ("leak_checker",), build)


def triage_service(ctx: ServiceContext) -> Any:
    loaded, version = _version(ctx, "triage")

    def build() -> Any:
        from medllm_pipelines.lib.scenarios.triage.engine import TriageEngine

        classify = partial(loaded.predictor.top_k, k=len(loaded.predictor.classes)) if loaded else None
        return TriageEngine(classify, model=loaded.describe() if loaded else None,
                            deidentify=text_deidentifier(ctx))

    return _cached(ctx, ("triage", version), build)


def ehr_service(ctx: ServiceContext) -> Any:
    loaded, version = _version(ctx, "note_generator")

    def build() -> Any:
        from medllm_pipelines.lib.scenarios.ehr import NoteDrafter, pattern_leak_check

        patterns, raw_zone = pattern_leak_check(), leak_checker(ctx)
        generate = loaded.predictor.generate_note if loaded else None
        return NoteDrafter(generate, leak_check=lambda text: [*patterns(text), *raw_zone(text)],
                           model=loaded.describe() if loaded else None)

    return _cached(ctx, ("ehr", version), build)


def imaging_unavailable(ctx: ServiceContext) -> str:
    status = ctx.models.status()
    return "; ".join(f"{name}: {status[name]['problem']}" for name in ("lesion_classifier", "lesion_segmentation"))


def imaging_service(ctx: ServiceContext) -> Any:
    classifier, c_version = _version(ctx, "lesion_classifier")
    segmenter, s_version = _version(ctx, "lesion_segmentation")
    if classifier is None and segmenter is None:
        return None

    def build() -> Any:
        from medllm_pipelines.lib.scenarios.imaging import ImagingAnalyser
        from medllm_pipelines.lib.scenarios.imaging.warmup import warm_up

        warm_up(ImagingAnalyser, classifier.predictor if classifier else None,
                segmenter.predictor if segmenter else None)
        return ImagingAnalyser(classifier.predictor if classifier else None,
                               segmenter.predictor if segmenter else None,
                               models={"classifier": classifier.describe() if classifier else None,
                                       "segmenter": segmenter.describe() if segmenter else None},
                               deidentify=dicom_deidentifier(ctx))

    return _cached(ctx, ("imaging", c_version, s_version), build)


def dicom_deidentifier(ctx: ServiceContext) -> Callable[[Any], Any]:
    """The project's DICOM profile per instance, UIDs and the patient pseudonym keyed by the Vault pseudonym key.

    The keyed digests are those of the research release, so a SEG names the UIDs the released study has.
    """
    from medllm_pipelines.lib.deidentify.dicom_release import KeyedDigestCache
    from medllm_pipelines.lib.scenarios.imaging import default_deidentifier

    def deidentify(dataset: Any) -> Any:
        keyed = KeyedDigestCache(ctx.keys.hmac_many)  # one per instance: nothing accumulates in the worker
        pseudonym = "SRV" + keyed("serve-patient:" + str(getattr(dataset, "PatientID", "") or ""))[:16]
        return default_deidentifier(keyed, pseudonym)(dataset)

    return deidentify


def diagnosis_service(ctx: ServiceContext) -> Any:
    loaded, version = _version(ctx, "t2d_risk")
    if loaded is None:
        return None

    def build() -> Any:
        from medllm_pipelines.lib.scenarios.diagnosis import RiskAssessor

        return RiskAssessor(loaded.predictor, model=loaded.describe())

    return _cached(ctx, ("diagnosis", version), build)


SCENARIO_OF_MODEL = {"triage": "triage", "note_generator": "ehr", "lesion_classifier": "imaging",
                     "lesion_segmentation": "imaging", "t2d_risk": "diagnosis"}


def warm_scenarios(ctx: ServiceContext, only: str | None = None) -> None:
    """Build the scenario services (de-identifier dictionaries, knowledge graph, terminology, raw-zone leak
    needles) before traffic arrives, and again right after a model version changes."""
    builders = {"triage": triage_service, "ehr": ehr_service, "imaging": imaging_service,
                "diagnosis": diagnosis_service}
    for scenario, build in builders.items():
        if only is None or scenario == only:
            build(ctx)


def warm(name: str, predictor: Any) -> None:
    """One inference before a version takes traffic (first calls pay for lazy initialisation)."""
    import numpy as np

    if name == "t2d_risk":
        import pandas as pd

        frame = pd.DataFrame([{c: np.nan for c in predictor.preprocessing.input_columns}]) \
            if hasattr(predictor.preprocessing, "input_columns") else None
        if frame is not None:
            predictor.predict_proba(frame)
    elif name == "triage":
        predictor.top_k(["warm up"], k=1)
    elif name in ("lesion_classifier", "lesion_segmentation"):
        image = np.zeros((64, 64), dtype=np.float32)
        if predictor.task == "segmentation":
            predictor.predict_masks([image])
        else:
            predictor.predict_proba([image])
