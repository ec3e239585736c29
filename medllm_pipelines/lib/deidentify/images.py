"""Release of de-identified DICOM images: policy, withheld persons, PS3.15 de-identification, files for training.

Each linked instance of the raw index is de-identified (``dicom_release``)
with its patient's known identifiers as the residual self-check; an instance
that fails that check or may carry burned-in text is quarantined, not
released. A released instance is written as ``<image_id>.dcm`` and, when its
pixels decode here, as ``<image_id>.npy`` for training. Imports pydicom: load
this module inside the asset that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.common.files import write_private_atomic, write_private_atomic_with
from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.deidentify.dicom import DicomProfile, default_profile
from medllm_pipelines.lib.deidentify.dicom_release import (
    InstanceToRelease,
    ReleaseDecision,
    ReleaseSummary,
    release_instances,
)
from medllm_pipelines.lib.deidentify.persons import PersonIndex
from medllm_pipelines.lib.deidentify.policy import HmacMany, Policy, PolicyOutcome, apply_policy
from medllm_pipelines.lib.deidentify.withholding import withhold
from medllm_pipelines.lib.deidentify.tables import UNLINKED, WITHHOLDING_RULES
from medllm_pipelines.lib.ingest.dicom import decoded_pixels
from medllm_pipelines.lib.security.leak_scan import IDENTIFIER_COLUMNS, identifier_needles

Needles = dict[object, frozenset[str]]


def patient_needles(patients: pd.DataFrame, persons: PersonIndex) -> Needles:
    """Each patient's known identifiers from the raw patients table, by pseudonym and by (institution, MRN).

    Forms a header may hold are added: ``Family^Given`` for an English name,
    ``姓^名`` for a Chinese one. Used for the residual self-check only.
    """
    needles = identifier_needles(patients)
    found: dict[object, set[str]] = {}
    columns = [c for c in IDENTIFIER_COLUMNS if c in patients.columns]
    for row in patients[["institution", "resource_key", *columns]].itertuples(index=False):
        values: set[str] = set()
        for column in columns:
            value = getattr(row, column)
            if isinstance(value, str) and value in needles.get(column, ()):
                values.add(value)
                if column == "name_en" and " " in value.strip():
                    given, family = value.strip().split(" ", 1)
                    values.add(f"{family}^{given}")
                elif column == "name_zh" and len(value) >= 2:
                    values.add(f"{value[0]}^{value[1:]}")
        mrn = row.mrn if "mrn" in columns and isinstance(row.mrn, str) else None
        owners = {persons.by_key.get((row.institution, row.resource_key)),
                  persons.by_mrn.get((row.institution, mrn)), (row.institution, mrn)}
        for owner in owners - {None, (row.institution, None)}:
            found.setdefault(owner, set()).update(values)
    return {owner: frozenset(values) for owner, values in found.items()}


def image_quarantine(decision: ReleaseDecision, *, stage: str, asset: str) -> QuarantineRecord:
    """Quarantine row of a withheld instance: reason codes, never values."""
    institution, source_object = decision.instance.context
    return QuarantineRecord(stage=stage, asset=asset, institution=institution, source_object=source_object,
                            position=None, resource_type="DICOM", reason_code=str(decision.withheld_reason_code),
                            reason=str(decision.withheld_reason))


@dataclass
class ImageRelease:
    """The released image rows (with their file names), the quarantined instances and the summary counts."""

    frame: pd.DataFrame
    quarantine: list[QuarantineRecord]
    outcome: PolicyOutcome
    rows_in: int
    withheld_by_rule: dict[str, int]
    summary: dict[str, Any]
    profile: DicomProfile
    policy_version: str
    pixels_withheld: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        report, files = self.summary, len(self.frame)
        recon = Reconciliation(self.rows_in, files, len(self.quarantine),
                               {UNLINKED: self.outcome.unlinked_rows, **self.withheld_by_rule})
        return {
            **recon.as_metadata(),
            "columns_removed": list(self.outcome.removed_columns),
            "columns_dropped_undeclared": list(self.outcome.undeclared_columns),
            "deidentification_policy_version": self.policy_version,
            "dicom_profile": self.profile.method_codes["basic"][1],
            "dicom_profile_standard": self.profile.standard,
            "dicom_profile_options": list(self.profile.options),
            "dicom_method_codes": report["method_codes"],
            **{name: report[name] for name in ("attributes_removed", "attributes_replaced", "attributes_cleaned")},
            "attribute_actions": report["attribute_actions"],
            **{name: report[name] for name in ("uids_remapped", "dates_shifted", "private_tags_removed",
                                               "private_tags_retained")},
            "identifiers_replaced_in_text": report["identifiers_replaced"],
            "attributes_cleaned_by_name": report["cleaned_attributes"],
            "burned_in_annotation": report["burned_in_annotation"],
            "withheld_by_reason": report["withheld_by_reason"],
            "files_written": files,
            "pixels_withheld_from_models_by_reason": dict(sorted(self.pixels_withheld.items())),
            "patient_identity_removed_checked": report["patient_identity_removed_yes"] == files,
        }


def _instances(index: pd.DataFrame, outcome: PolicyOutcome, releasable: set[str], needles: Needles,
               read_object: Callable[[str], bytes]) -> list[InstanceToRelease]:
    """The linked, not withheld instances, each with its patient's identifiers and a reader of its bytes."""
    if not len(outcome.frame):
        return []
    linked = index.loc[outcome.kept_index]
    return [
        InstanceToRelease(
            image_id=image_id,
            patient_pseudonym=pseudonym,
            needles=needles.get(pseudonym, frozenset()) | needles.get((institution, patient_id), frozenset()),
            read=partial(read_object, source_object),
            context=(institution, source_object),
        )
        for image_id, pseudonym, institution, patient_id, source_object in zip(
            outcome.frame["image_id"], outcome.frame["patient_pseudonym"], linked["institution"],
            linked["patient_id"], linked["source_object"], strict=True)
        if image_id in releasable
    ]


def release_images(index: pd.DataFrame, raw_patients: pd.DataFrame, persons: PersonIndex, policy: Policy,
                   withheld: pd.DataFrame, *, hmac_many: HmacMany, read_object: Callable[[str], bytes],
                   images_dir: Path, quarantine_as: tuple[str, str]) -> ImageRelease:
    """De-identify and write every releasable instance of ``index``; ``quarantine_as``: (stage, asset) of the rows."""
    outcome = apply_policy("dicom_instances", index, policy, person_by_key=persons.by_key,
                           person_by_mrn=persons.by_mrn, hmac_many=hmac_many)
    # a registration withheld from deidentify/patients takes its images with it: no file is written for them
    withholding = (withhold(outcome.frame, withheld, rules=WITHHOLDING_RULES)
                   if "patient_pseudonym" in outcome.frame.columns else None)
    releasable = set(withholding.frame["image_id"]) if withholding is not None else set()
    # images whose pixels cannot be decoded here: released de-identified, withheld from models (no pixel file)
    undecodable = ({i: r for i, r in zip(outcome.frame["image_id"], outcome.frame["pixel_undecodable_reason"],
                                         strict=True) if isinstance(r, str) and r}
                   if len(outcome.frame) and "pixel_decodable" in outcome.frame.columns else {})
    profile = default_profile()
    summary, quarantine = ReleaseSummary(), []
    files: dict[str, tuple[str, str | None]] = {}
    pixels_withheld: dict[str, int] = {}
    instances = _instances(index, outcome, releasable, patient_needles(raw_patients, persons), read_object)
    for decision in release_instances(instances, hmac_many, profile=profile):
        summary.add(decision)
        if not decision.released or decision.data is None:
            quarantine.append(image_quarantine(decision, stage=quarantine_as[0], asset=quarantine_as[1]))
            continue
        image_id = decision.instance.image_id
        write_private_atomic(images_dir / f"{image_id}.dcm", decision.data)
        pixels, withheld_reason = decoded_pixels(decision.data, undecodable.get(image_id))
        if pixels is None:
            pixels_withheld[str(withheld_reason)] = pixels_withheld.get(str(withheld_reason), 0) + 1
            files[image_id] = (f"{image_id}.dcm", None)
            continue
        write_private_atomic_with(images_dir / f"{image_id}.npy", partial(np.save, arr=pixels))
        files[image_id] = (f"{image_id}.dcm", f"{image_id}.npy")
    frame = outcome.frame[outcome.frame["image_id"].isin(files)] if len(outcome.frame) else outcome.frame
    frame = frame.assign(dicom_file=[files[i][0] for i in frame["image_id"]],
                         pixel_file=[files[i][1] for i in frame["image_id"]])
    withheld_by_rule = withholding.removed_by_rule if withholding is not None else dict.fromkeys(WITHHOLDING_RULES, 0)
    return ImageRelease(frame, quarantine, outcome, len(index), withheld_by_rule, summary.as_dict(), profile,
                        policy.version, pixels_withheld)
