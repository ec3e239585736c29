"""The export workflow behind ``medllm export``: agreement, k-anonymity, identifier screen, encrypted write.

An export leaves the platform, so every gate runs before a byte is written and
in this order (each refusal raises and writes nothing): a sharing agreement in
force that covers the table and the recipient; the table exists; it is
k-anonymous on every quasi-identifier the de-identification policy declares;
no identifier value of the raw zone appears in it
(:func:`export_dataset`, which also writes the file). Exported
files are listed in ``<exports>/index.json`` because they are holders of the
export key that a key rotation must rewrap, wherever they were written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common.files import write_private_atomic, write_private_atomic_with
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.deidentify.policy import load_policy
from medllm_pipelines.lib.deidentify.risk import k_anonymity
from medllm_pipelines.lib.security.envelope import DataKeyProvider, encrypt_stream
from medllm_pipelines.lib.security.governance import (
    ExportRefused,
    GovernanceError,
    GovernanceStore,
    SharingAgreement,
    SharingAgreementError,
)
from medllm_pipelines.lib.security.leak_scan import IDENTIFIER_COLUMNS, identifier_needles, scan_frame
from medllm_pipelines.lib.security.raw_zone import RawZone

__all__ = [
    "EXPORT_INDEX_NAME",
    "IDENTIFIABLE_COLUMNS",
    "ExportReceipt",
    "ExportRequest",
    "export_audit_details",
    "export_dataset",
    "export_warehouse_table",
    "exported_files",
    "identifiable_columns",
    "raw_zone_needles",
    "record_export",
    "require_k_anonymous",
]

EXPORT_INDEX_NAME = "index.json"
# Columns that identify a person, an original file or a study: never exported.
IDENTIFIABLE_COLUMNS = frozenset(IDENTIFIER_COLUMNS) | {
    "name", "patient_name", "family", "given", "birth_date", "dob", "patient_key", "patient_id",
    "other_patient_ids", "id_number", "telephone", "mobile", "accession_number", "study_uid", "series_uid",
    "sop_instance_uid", "source_path", "original_path", "institution_name",
}


@dataclass(frozen=True)
class ExportRequest:
    """What the person exporting asked for (``dataset`` is a warehouse table ``schema.table``)."""

    dataset: str
    recipient: str
    agreement_id: str
    out_file: Path
    cross_border: bool
    today: dt.date


def export_warehouse_table(
    request: ExportRequest,
    *,
    governance_dir: str | os.PathLike[str],
    warehouse_url: str,
    k: int,
    purpose: str | None,
    keys: DataKeyProvider,
    needles: Callable[[], Mapping[str, set[str]]],
) -> ExportReceipt:
    """Run every gate, then write the table envelope-encrypted under ``keys``.

    ``purpose`` selects the de-identification policy whose quasi-identifiers
    the k-anonymity gate checks. ``needles`` is called only once the cheaper
    gates passed, because reading the raw zone's identifiers is itself an
    audited access.

    Raises:
        GovernanceError: no agreement in force, or no such table.
        ExportRefused: identifiable columns or values, or not k-anonymous.
    """
    agreement = GovernanceStore(governance_dir).require_sharing_agreement(
        request.recipient, request.dataset, request.today, cross_border=request.cross_border,
        agreement_id=request.agreement_id)
    schema, table = request.dataset.split(".")
    warehouse = Warehouse(warehouse_url)
    try:
        if not warehouse.table_exists(schema, table):
            raise GovernanceError(f"no warehouse table {request.dataset}", "missing_dataset")
        frame = warehouse.read_table(schema, table)
    finally:
        warehouse.dispose()
    require_k_anonymous(frame, request.dataset, k, purpose=purpose)
    return export_dataset(frame, request.out_file, keys=keys, agreement=agreement, dataset=request.dataset,
                          today=request.today, needles=needles())


@dataclass(frozen=True)
class ExportReceipt:
    path: Path
    manifest_path: Path
    dataset: str
    agreement_id: str
    agreement_version: int
    recipient: str
    cross_border: bool
    rows: int
    columns: tuple[str, ...]
    content_sha256: str
    envelope_sha256: str
    key_ref: str
    exported_at: str
    aad: str = field(repr=False, default="")

    def as_metadata(self) -> dict[str, Any]:
        return {"export_dataset": self.dataset, "export_rows": self.rows, "export_columns": len(self.columns),
                "export_content_sha256": self.content_sha256, "export_envelope_sha256": self.envelope_sha256,
                "export_key_ref": self.key_ref, "sharing_agreement_id": self.agreement_id,
                "sharing_agreement_version": self.agreement_version, "sharing_recipient": self.recipient,
                "sharing_cross_border": self.cross_border}


def identifiable_columns(columns: Iterable[str], extra: Sequence[str] = ()) -> list[str]:
    """Columns whose name marks a direct identifier or an encrypted original."""
    deny = IDENTIFIABLE_COLUMNS | {c.lower() for c in extra}
    return sorted(c for c in columns if str(c).lower() in deny or "ciphertext" in str(c).lower())


def export_dataset(
    frame: pd.DataFrame,
    dest: str | os.PathLike[str],
    *,
    keys: DataKeyProvider,
    agreement: SharingAgreement,
    dataset: str,
    today: dt.date,
    needles: Mapping[str, set[str]] | None = None,
    extra_identifiable: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> ExportReceipt:
    """Write ``frame`` as an envelope-encrypted Parquet file under ``agreement``.

    Refuses (ExportRefused, nothing written) a frame with identifiable columns
    or, given the raw zone's ``needles`` (``leak_scan.identifier_needles``), any
    identifier value in any column; refuses an agreement not in force or not
    covering ``dataset``. ``keys`` should be a transit key the recipient may
    decrypt with (e.g. a per-recipient ``medllm-export-<recipient>`` key), not the
    raw-zone key. The AAD binds the file to the agreement and dataset; a
    manifest without data goes beside it.
    """
    if dataset not in agreement.datasets:
        raise SharingAgreementError(f"agreement {agreement.id!r} does not cover dataset {dataset!r}", "not_covered")
    if (why := agreement.validity(today)) is not None:
        raise SharingAgreementError(f"agreement {agreement.id!r} is not in force ({why})", why)
    bad_columns = identifiable_columns(frame.columns, extra_identifiable)
    if bad_columns:
        raise ExportRefused(f"refusing to export identifiable columns {bad_columns}; export de-identified data only")
    if needles:
        hits = scan_frame(frame, dict(needles), dataset)
        if hits:
            found = sorted({f"{h.location} ({h.identifier_kind})" for h in hits})
            raise ExportRefused(f"refusing to export: identifier values found in {found}")

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    plaintext = buffer.getvalue()
    dest = Path(dest)
    aad = f"export:{agreement.id}:v{agreement.version}:{dataset}"
    info = write_private_atomic_with(
        dest, lambda handle: encrypt_stream(io.BytesIO(plaintext), handle, keys, aad=aad.encode("utf-8"))
    )
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    receipt = ExportReceipt(
        path=dest,
        manifest_path=dest.with_name(dest.name + ".manifest.json"),
        dataset=dataset,
        agreement_id=agreement.id,
        agreement_version=agreement.version,
        recipient=agreement.recipient,
        cross_border=agreement.cross_border,
        rows=len(frame),
        columns=tuple(str(c) for c in frame.columns),
        content_sha256=hashlib.sha256(plaintext).hexdigest(),
        envelope_sha256=info.envelope_sha256,
        key_ref=info.key_ref,
        exported_at=stamp,
        aad=aad,
    )
    manifest = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(receipt).items() if k not in {"path", "manifest_path"}}
    manifest["file"] = dest.name
    write_private_atomic(receipt.manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return receipt


def require_k_anonymous(frame: pd.DataFrame, dataset: str, k: int, *, purpose: str | None = None) -> None:
    """An export leaves the platform: it must be k-anonymous on every quasi-identifier the policy declares."""
    policy = load_policy(purpose=purpose)
    declared = {column for rule in policy.disclosure.values() for column in rule.quasi_identifiers}
    present = sorted(declared & set(frame.columns))
    if not present or frame.empty:
        return
    report = k_anonymity(frame, present, k=k)
    if not report.satisfied:
        raise ExportRefused(
            f"{dataset} is not {k}-anonymous on {', '.join(present)}: {len(report.classes_below_k)} equivalence "
            f"class(es) hold {report.rows_below_k} row(s) below k (smallest {report.smallest_class}); generalise or "
            "suppress before exporting"
        )


def raw_zone_needles(zone: RawZone, patients_table: str) -> dict[str, set[str]]:
    """The identifier values an export must not contain (empty before anything was ingested)."""
    return identifier_needles(zone.read_partitions(patients_table)) if zone.partitions(patients_table) else {}


def export_audit_details(receipt: ExportReceipt) -> dict[str, Any]:
    """What the audit entry of a completed export records: counts and hashes, never a value."""
    return {"agreement_id": receipt.agreement_id, "agreement_version": receipt.agreement_version,
            "recipient": receipt.recipient, "rows": receipt.rows, "columns": len(receipt.columns),
            "envelope_sha256": receipt.envelope_sha256, "key_ref": receipt.key_ref}


def exported_files(exports_dir: Path) -> list[Path]:
    """Every export written so far (the index), in or outside ``exports_dir``."""
    index = Path(exports_dir) / EXPORT_INDEX_NAME
    if not index.exists():
        return []
    return [Path(p) for p in json.loads(index.read_text(encoding="utf-8"))]


def record_export(exports_dir: Path, path: Path) -> None:
    """Add ``path`` to the index, so that a rotation of the export key finds it."""
    listed = [str(p) for p in exported_files(exports_dir)]
    resolved = str(Path(path).resolve())
    if resolved not in listed:
        listed.append(resolved)
        write_private_atomic(Path(exports_dir) / EXPORT_INDEX_NAME, json.dumps(listed, indent=1) + "\n")
