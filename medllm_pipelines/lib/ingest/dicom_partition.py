"""One institution's DICOM objects indexed: instance and frame tables, directories, study/series summaries.

``index_dicom_partition`` indexes every stored DICOM object of a partition
(one bad file is one quarantine record, never a failed step) and returns a
:class:`DicomPartition` that reconciles (files in = instances + quarantined +
DICOMDIRs read as directories) and describes the partition for the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.records import FileOutcomes, QuarantineRecord, Reconciliation, count_reasons
from medllm_pipelines.lib.ingest.dicom import (
    DICOM_FRAME_COLUMNS,
    DICOM_INDEX_COLUMNS,
    DicomDirectory,
    DicomIndexed,
    index_dicom,
)
from medllm_pipelines.lib.security.raw_zone import RawZone

LINEAGE = ["institution", "source_object"]
RULE_DICOMDIR = "dicomdir_index"


@dataclass
class DicomPartition:
    """The index of one institution's DICOM objects: instances, frames, directories, quarantine, per file."""

    asset: str
    instances: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    directories: list[DicomDirectory] = field(default_factory=list)
    outcomes: FileOutcomes | None = None
    partition: str | None = None  # the institution partition, for metadata

    def __post_init__(self) -> None:
        if self.outcomes is None:
            self.outcomes = FileOutcomes(self.asset)

    def add(self, source_object: str, institution: str | None, indexed: DicomIndexed) -> None:
        lineage = {"institution": institution, "source_object": source_object}
        if indexed.instance is not None:
            self.instances.append({**indexed.instance, **lineage})
            self.frames.extend({**frame, **lineage} for frame in indexed.frames)
        if indexed.quarantine is not None:
            self.quarantine.append(indexed.quarantine)
        if indexed.directory is not None:
            self.directories.append(indexed.directory)
        self.outcomes.add(
            source_object, institution, records_in=1, records_out=int(indexed.instance is not None),
            quarantine=[indexed.quarantine] if indexed.quarantine else [],
            removed_by_rule={RULE_DICOMDIR: int(indexed.directory is not None)},
        )

    @property
    def records_in(self) -> int:
        return len(self.instances) + len(self.quarantine) + len(self.directories)

    def directory_summary(self) -> dict[str, Any]:
        """DICOMDIR records by type and how many referenced instances were delivered (by SOP Instance UID)."""
        delivered = {row["sop_instance_uid"] for row in self.instances}
        referenced = [uid for d in self.directories for _, uid in d.references]
        records: dict[str, int] = {}
        for directory in self.directories:
            for kind, n in directory.records_by_type.items():
                records[kind] = records.get(kind, 0) + n
        present = sum(1 for uid in referenced if uid in delivered)
        return {
            "dicomdirs": len(self.directories),
            "records_by_type": dict(sorted(records.items())),
            "referenced_files": len(referenced),
            "referenced_files_delivered": present,
            "referenced_files_missing": len(referenced) - present,
        }

    def undecodable_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.instances:
            if not row["pixel_decodable"]:
                counts[row["pixel_undecodable_reason"]] = counts.get(row["pixel_undecodable_reason"], 0) + 1
        return dict(sorted(counts.items()))

    def instances_frame(self) -> pd.DataFrame:
        """The ``dicom_instances`` table of the partition (declared columns, also when empty)."""
        return pd.DataFrame(self.instances, columns=[*DICOM_INDEX_COLUMNS, *LINEAGE])

    def frames_frame(self) -> pd.DataFrame:
        """The ``dicom_frames`` table of the partition."""
        return pd.DataFrame(self.frames, columns=[*DICOM_FRAME_COLUMNS, *LINEAGE])

    def reconciliation(self) -> Reconciliation:
        """Files in = instances + quarantined + DICOMDIRs read as directories (raises when it does not hold)."""
        return Reconciliation(
            self.records_in, len(self.instances), len(self.quarantine), {RULE_DICOMDIR: len(self.directories)}
        ).check()

    def hierarchy(self) -> dict[str, Any]:
        """Studies, series, instances and frames of the partition ({} when it sent no DICOM)."""
        if not self.records_in:
            return {}
        studies, series = summarise_dicom_index(self.instances_frame())
        return {
            "studies": len(studies), "series": len(series), "instances": len(self.instances),
            "frames": len(self.frames), "quarantined": len(self.quarantine),
            **({"dicomdir": self.directory_summary()} if self.directories else {}),
        }

    def instances_metadata(self) -> dict[str, Any]:
        hierarchy = self.hierarchy()
        return {
            "dagster/row_count": len(self.instances),
            **self.reconciliation().as_metadata(),
            "quarantined": len(self.quarantine),
            "quarantined_by_reason": dict(sorted(count_reasons(self.quarantine).items())),
            "rows_by_institution": {self.partition: len(self.instances)},
            "pixels_undecodable_by_reason": self.undecodable_by_reason(),
            "dicom_hierarchy_by_institution": {self.partition: hierarchy} if hierarchy else {},
            "source_files": len(self.outcomes),
        }

    def frames_metadata(self) -> dict[str, Any]:
        return {
            "dagster/row_count": len(self.frames),
            "rows_by_institution": {self.partition: len(self.frames)},
            "source_files": len(self.outcomes),
        }


def index_dicom_partition(zone: RawZone, objects: pd.DataFrame, *, partition: str, asset: str) -> DicomPartition:
    """Index ``objects`` (stored-object ledger rows of one institution's DICOM files), header only."""
    index = DicomPartition(asset, partition=partition)
    for row in objects.itertuples(index=False):
        indexed = index_dicom(zone.get_object(row.content_sha256), institution=row.institution,
                              source_object=row.content_sha256, asset=asset)
        index.add(row.content_sha256, row.institution, indexed)
    index.reconciliation()
    return index


def summarise_dicom_index(instances: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Study and series summaries over instance rows (``index_dicom_object`` rows, plus ``institution``).

    Series: instances, frames, modality, geometry, instance-number range and
    whether numbers are missing in it (a partly delivered series), SOP classes.
    Studies: series and instance counts, modalities, date, and whether all its
    instances agree on the patient (``consistent_patient``; a study whose
    files name two patients is a mix-up to look at, not to train on).
    """
    frame = instances.copy()
    if "institution" not in frame.columns:
        frame["institution"] = None
    frame["institution"] = frame["institution"].astype("object")
    keys = ["institution", "study_uid", "series_uid"]
    if frame.empty:
        return pd.DataFrame(columns=STUDY_SUMMARY_COLUMNS), pd.DataFrame(columns=SERIES_SUMMARY_COLUMNS)

    def joined(values: pd.Series) -> str | None:
        found = sorted({str(v) for v in values.dropna()})
        return "\\".join(found) or None

    series_rows = []
    for (institution, study, series), group in frame.groupby(keys, dropna=False, sort=True):
        numbers = pd.to_numeric(group.get("instance_number"), errors="coerce").dropna().astype(int)
        first, last = (int(numbers.min()), int(numbers.max())) if len(numbers) else (None, None)
        missing = (last - first + 1 - numbers.nunique()) if first is not None else None
        series_rows.append({
            "institution": institution, "study_uid": study, "series_uid": series,
            "modality": joined(group["modality"]), "sop_class_uids": joined(group["sop_class_uid"]),
            "instances": len(group), "frames": int(group["number_of_frames"].fillna(1).sum()),
            "rows": joined(group["rows"]), "columns": joined(group["columns"]),
            "first_instance_number": first, "last_instance_number": last,
            "missing_instance_numbers": missing,
            "burned_in_annotation": bool((group["burned_in_annotation"].fillna("").str.upper() == "YES").any()),
        })
    series = pd.DataFrame(series_rows, columns=SERIES_SUMMARY_COLUMNS)
    study_rows = []
    for (institution, study), group in frame.groupby(["institution", "study_uid"], dropna=False, sort=True):
        patients = group["patient_id"].dropna().unique()
        study_rows.append({
            "institution": institution, "study_uid": study, "patient_id": patients[0] if len(patients) else None,
            "consistent_patient": len(patients) <= 1, "study_date": joined(group["study_date"]),
            "modalities": joined(group["modality"]), "series": group["series_uid"].nunique(),
            "instances": len(group), "frames": int(group["number_of_frames"].fillna(1).sum()),
        })
    return pd.DataFrame(study_rows, columns=STUDY_SUMMARY_COLUMNS), series


SERIES_SUMMARY_COLUMNS = [
    "institution", "study_uid", "series_uid", "modality", "sop_class_uids", "instances", "frames", "rows", "columns",
    "first_instance_number", "last_instance_number", "missing_instance_numbers", "burned_in_annotation",
]
STUDY_SUMMARY_COLUMNS = [
    "institution", "study_uid", "patient_id", "consistent_patient", "study_date", "modalities", "series", "instances",
    "frames",
]
