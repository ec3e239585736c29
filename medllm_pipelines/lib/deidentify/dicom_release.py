"""Release DICOM instances de-identified, or hold them back with a reason.

``dicom.deidentify_file`` does one file; this module does a batch the way the
platform needs it: the UID key and the per-patient date shift come from a
batched keyed digest (Vault transit HMAC: one request per chunk, not one per
UID), every output is read back and self-checked against the patient's known
identifiers, and each instance ends either released (bytes to publish) or
withheld with a reason code (burned-in annotation, residual identifier, a
file the de-identifier could not process). Reasons and reports name
attributes, never values.

Pure library: no Dagster import.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread

from medllm_pipelines.lib.deidentify.dicom import (
    DicomDeidReport,
    DicomProfile,
    default_profile,
    deidentify_file,
    residual_identifiers,
    uids_to_remap,
)
from medllm_pipelines.lib.deidentify.text.surrogates import patient_date_shift

HmacMany = Callable[[Sequence[str]], Sequence[str]]

UID_DOMAIN = "dicom-uid\x1f"  # UIDs are keyed apart from pseudonyms and date shifts
WITHHELD_RESIDUAL = "residual_identifier"
WITHHELD_FAILED = "deidentification_failed"
WITHHELD_IDENTITY_FLAG = "patient_identity_removed_missing"
_REASONS = {
    "burned_in_annotation": "BurnedInAnnotation is YES: the pixels may show identifying text (PS3.15 E.1.1)",
    "burned_in_annotation_unknown": "BurnedInAnnotation is missing on a modality that often carries burned-in text",
    WITHHELD_RESIDUAL: "a known identifier of the patient is still present after de-identification in: {}",
    WITHHELD_FAILED: "the de-identifier could not process the file ({})",
    WITHHELD_IDENTITY_FLAG: "the de-identified file does not say PatientIdentityRemoved=YES",
}


class KeyedDigestCache:
    """A keyed digest of one message at a time, served from batched ``hmac_many`` calls.

    ``prefetch`` asks for every missing message in one request; a miss at
    call time costs one request of its own (and is counted).
    """

    def __init__(self, hmac_many: HmacMany) -> None:
        self._hmac_many = hmac_many
        self._digests: dict[str, str] = {}
        self.requests = 0

    def prefetch(self, messages: Iterable[str]) -> None:
        missing = sorted({m for m in messages if m not in self._digests})
        if missing:
            self.requests += 1
            self._digests.update(zip(missing, self._hmac_many(missing), strict=True))

    def __call__(self, message: str) -> str:
        if message not in self._digests:
            self.prefetch([message])
        return self._digests[message]


def date_shift_messages(patient_pseudonym: str) -> list[str]:
    """The messages ``patient_date_shift`` will digest for this patient (learnt by asking it)."""
    asked: list[str] = []
    patient_date_shift(lambda message: asked.append(message) or "", patient_pseudonym)
    return asked


@dataclass(frozen=True)
class InstanceToRelease:
    """One raw instance: who it belongs to, what must not survive, how to read it."""

    image_id: str
    patient_pseudonym: str
    needles: frozenset[str]  # the patient's known identifiers (the self-check)
    read: Callable[[], bytes]  # the raw Part-10 bytes (decrypted on demand)
    context: Any = None  # carried through for the caller (institution, source object...)


@dataclass
class ReleaseDecision:
    instance: InstanceToRelease
    data: bytes | None  # the de-identified file; None when withheld
    report: DicomDeidReport | None
    date_shift_days: int | None
    withheld_reason_code: str | None = None
    withheld_reason: str | None = None
    residual_attributes: list[str] = field(default_factory=list)

    @property
    def released(self) -> bool:
        return self.withheld_reason_code is None


def release_instances(
    instances: Iterable[InstanceToRelease],
    hmac_many: HmacMany,
    *,
    profile: DicomProfile | None = None,
    chunk_size: int = 64,
    **deidentify_kwargs: Any,
) -> Iterator[ReleaseDecision]:
    """De-identify each instance and decide whether it may be released, one decision per instance.

    Instances are read a chunk at a time so that the chunk's UIDs and date
    shifts cost one keyed-digest request, while memory stays bounded.
    ``deidentify_kwargs`` go to ``deidentify_file`` (detector, surrogate_for,
    pixels_cleaned).
    """
    profile = profile if profile is not None else default_profile()
    keyed = KeyedDigestCache(hmac_many)
    batch: list[InstanceToRelease] = []
    for instance in instances:
        batch.append(instance)
        if len(batch) >= chunk_size:
            yield from _release_chunk(batch, keyed, profile, deidentify_kwargs)
            batch = []
    if batch:
        yield from _release_chunk(batch, keyed, profile, deidentify_kwargs)


def _release_chunk(batch: list[InstanceToRelease], keyed: KeyedDigestCache, profile: DicomProfile,
                   deidentify_kwargs: dict[str, Any]) -> Iterator[ReleaseDecision]:
    raw: list[bytes | None] = []
    messages: list[str] = []
    for instance in batch:
        data = instance.read()
        raw.append(data)
        messages += date_shift_messages(instance.patient_pseudonym)
        # an unreadable file is withheld by _release_one, with the instance: nothing to prefetch for it
        with suppress(Exception):
            header = dcmread(io.BytesIO(data), stop_before_pixels=True)
            messages += [UID_DOMAIN + uid for uid in uids_to_remap(header, profile)]
    keyed.prefetch(messages)

    def uid_key(uid: str) -> str:
        return keyed(UID_DOMAIN + uid)

    for instance, data in zip(batch, raw, strict=True):
        yield _release_one(instance, data or b"", keyed, uid_key, profile, deidentify_kwargs)


def _release_one(instance: InstanceToRelease, data: bytes, keyed: KeyedDigestCache, uid_key: Callable[[str], str],
                 profile: DicomProfile, deidentify_kwargs: dict[str, Any]) -> ReleaseDecision:
    shift = patient_date_shift(keyed, instance.patient_pseudonym)
    try:
        out, report = deidentify_file(data, profile=profile, uid_key=uid_key, date_shift_days=shift,
                                      patient_pseudonym=instance.patient_pseudonym, **deidentify_kwargs)
        result = dcmread(io.BytesIO(out))
    except Exception as exc:  # noqa: BLE001 - the exception text may quote a value: only its type is kept
        return _withhold(ReleaseDecision(instance, None, None, shift), WITHHELD_FAILED, type(exc).__name__)
    decision = ReleaseDecision(instance, out, report, shift)
    if report.quarantine:
        code = report.quarantine_reason or "quarantined_by_profile"
        return _withhold(decision, code)
    residual = residual_identifiers(result, instance.needles)
    if residual:
        decision.residual_attributes = residual
        return _withhold(decision, WITHHELD_RESIDUAL, ", ".join(residual))
    if str(result.get("PatientIdentityRemoved", "")).upper() != "YES":
        return _withhold(decision, WITHHELD_IDENTITY_FLAG)
    return decision


def _withhold(decision: ReleaseDecision, code: str, detail: str = "") -> ReleaseDecision:
    decision.data = None
    decision.withheld_reason_code = code
    decision.withheld_reason = _REASONS.get(code, code).format(detail)
    return decision


@dataclass
class ReleaseSummary:
    """Counts over a batch of decisions, for asset metadata (attribute names and counts only)."""

    instances: int = 0
    released: int = 0
    withheld_by_reason: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)  # D/Z/X/K/C/U applied, summed over files
    uids_remapped: int = 0
    dates_shifted: int = 0
    private_removed: int = 0
    private_retained: int = 0
    cleaned_attributes: Counter[str] = field(default_factory=Counter)  # files in which each was cleaned
    identifiers_replaced: Counter[str] = field(default_factory=Counter)
    burned_in_annotation: Counter[str] = field(default_factory=Counter)
    method_codes: Counter[str] = field(default_factory=Counter)
    patient_identity_removed: int = 0  # released files read back with PatientIdentityRemoved=YES

    def add(self, decision: ReleaseDecision) -> None:
        self.instances += 1
        if decision.released:
            self.released += 1
            self.patient_identity_removed += 1  # checked by _release_one before release
        else:
            self.withheld_by_reason[decision.withheld_reason_code or "unknown"] += 1
        report = decision.report
        if report is None:
            return
        self.actions.update(report.actions)
        self.uids_remapped += report.uids_remapped
        self.dates_shifted += report.dates_shifted
        self.private_removed += report.private_removed
        self.private_retained += report.private_retained
        self.cleaned_attributes.update(report.cleaned_attributes)
        self.identifiers_replaced.update(report.identifiers_replaced)
        self.burned_in_annotation[report.burned_in_annotation] += 1
        self.method_codes.update(report.method_codes)

    @property
    def withheld(self) -> int:
        return sum(self.withheld_by_reason.values())

    def as_dict(self) -> dict[str, Any]:
        def plain(counter: Counter[str]) -> dict[str, int]:
            return {str(k): int(v) for k, v in sorted(counter.items())}

        return {
            "instances": self.instances,
            "released": self.released,
            "withheld": self.withheld,
            "withheld_by_reason": plain(self.withheld_by_reason),
            "attribute_actions": plain(self.actions),
            "attributes_removed": int(self.actions["X"]),
            "attributes_replaced": int(self.actions["D"] + self.actions["Z"]),
            "attributes_cleaned": int(self.actions["C"]),
            "attributes_kept": int(self.actions["K"]),
            "uids_remapped": self.uids_remapped,
            "dates_shifted": self.dates_shifted,
            "private_tags_removed": self.private_removed,
            "private_tags_retained": self.private_retained,
            "cleaned_attributes": plain(self.cleaned_attributes),
            "identifiers_replaced": plain(self.identifiers_replaced),
            "burned_in_annotation": plain(self.burned_in_annotation),
            "method_codes": plain(self.method_codes),
            "patient_identity_removed_yes": self.patient_identity_removed,
        }


__all__ = [
    "UID_DOMAIN",
    "WITHHELD_FAILED",
    "WITHHELD_IDENTITY_FLAG",
    "WITHHELD_RESIDUAL",
    "InstanceToRelease",
    "KeyedDigestCache",
    "ReleaseDecision",
    "ReleaseSummary",
    "date_shift_messages",
    "release_instances",
]
