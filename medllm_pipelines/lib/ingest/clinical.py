"""One institution's clinical feeds (FHIR Bundles, Bulk NDJSON, HL7 v2) parsed into raw-zone tables.

A full refresh of the partition from the raw zone: every stored clinical
object of the institution is decrypted, parsed and its rows written in part
files of at most ``part_rows`` rows per table, so memory is bounded whatever
the feed's size (Bulk NDJSON is decrypted and parsed chunk by chunk). The
result carries the counts only - the partition's reconciliation (entries read
= rows out + quarantined + set aside by rule), per-file outcomes, the Bulk
manifest check and HL7 warnings - and its metadata for the UI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from medllm_pipelines.lib.common.records import FileOutcomes, Reconciliation, count_reasons
from medllm_pipelines.lib.ingest.feed import EVENT_ERASURE, ManifestCheck, ParsedFeed, check_bulk_manifests
from medllm_pipelines.lib.ingest.fhir import iter_ndjson_batches, parse_fhir_object
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE, FHIR_NDJSON, HL7V2
from medllm_pipelines.lib.ingest.tables import FHIR_TABLES, rows_to_frame
from medllm_pipelines.lib.security.raw_zone import RawZone

CLINICAL_FEED_KINDS = (FHIR_BUNDLE, FHIR_NDJSON, HL7V2)
# Rows per raw-zone part file: bounds memory whatever the feed's size.
PART_ROWS = 50_000


class TableWriter(Protocol):
    """Where one table's rows of the partition go (``RawZone.partition_writer``): parts, then one commit."""

    def write(self, frame: pd.DataFrame) -> None: ...

    def commit(self) -> int: ...


def parse_clinical_object(
    zone: RawZone, sha256: str, kind: str, institution: str | None, asset: str
) -> Iterator[ParsedFeed]:
    """Parsed batches of one stored clinical object: Bulk NDJSON streamed (decrypted and parsed chunk by
    chunk), Bundles and HL7 batches parsed whole (one file is one message set)."""
    lineage = {"institution": institution, "source_object": sha256, "asset": asset}
    if kind == FHIR_NDJSON:
        with zone.stream_object(sha256) as chunks:
            yield from iter_ndjson_batches(chunks, **lineage)
        return
    if kind == HL7V2:
        from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object  # hl7apy is imported only for HL7 feeds

        yield parse_hl7_object(zone.get_object(sha256), **lineage)
        return
    yield parse_fhir_object(zone.get_object(sha256), kind=kind, **lineage)


@dataclass
class ClinicalPartition:
    """What one institution's clinical feeds became: counts per table, and everything set aside."""

    partition: str
    files: int = 0
    parsed: ParsedFeed = field(default_factory=lambda: ParsedFeed(rows={}))  # counts only: rows went to the writers
    rows_by_table: dict[str, int] = field(default_factory=lambda: {table: 0 for table in FHIR_TABLES})
    ndjson_types: dict[str, int] = field(default_factory=dict)  # resourceType -> NDJSON entries (manifest check)
    outcomes: FileOutcomes | None = None

    @property
    def records_out(self) -> int:
        return sum(self.rows_by_table.values())

    @property
    def files_with_quarantine(self) -> int:
        return len({q.source_object for q in self.parsed.quarantine})

    def manifest_check(self) -> ManifestCheck | None:
        if not self.parsed.manifests:
            return None
        return check_bulk_manifests(self.parsed.manifests, self.ndjson_types)

    def reconciliation(self) -> Reconciliation:
        """Entries read = rows written + quarantined + set aside by rule (raises when it does not hold)."""
        return Reconciliation(
            self.parsed.resources_seen, self.records_out, len(self.parsed.quarantine), self.parsed.removals()
        ).check()

    def as_metadata(self) -> dict[str, Any]:
        """The feed's figures for this partition (the ``feed_*`` keys every clinical table carries)."""
        recon = self.reconciliation()
        check = self.manifest_check()
        return {
            "feed_files": self.files,
            "feed_files_with_quarantine": self.files_with_quarantine,
            "feed_entries_read": recon.records_in,
            "feed_resources_out": recon.records_out,
            "feed_quarantined": recon.quarantined,
            "feed_out_of_scope": self.parsed.out_of_scope,
            "feed_out_of_scope_by_type": dict(sorted(self.parsed.out_of_scope_by_type.items())),
            "feed_removed_by_rule": dict(sorted(self.parsed.removals().items())),
            "feed_events": dict(sorted(self.parsed.events.items())),
            "feed_erasure_requests": self.parsed.events.get(EVENT_ERASURE, 0),
            "feed_reconciled": recon.balanced,
            "feed_quarantined_by_reason": dict(sorted(count_reasons(self.parsed.quarantine).items())),
            "feed_bulk_manifest_checks": check.as_metadata() if check else {},
            "feed_bulk_counts_match": check is None or not check.mismatches,
            "feed_hl7_warnings_by_code": dict(sorted(self.parsed.warnings_by_code.items())),
        }

    def table_metadata(self, table: str) -> dict[str, Any]:
        """One table's rows in this partition, and its feed's figures."""
        rtype = FHIR_TABLES[table]
        return {
            "dagster/row_count": self.rows_by_table[table],
            "rows_by_institution": {self.partition: self.rows_by_table[table]},
            "quarantined_of_this_type": sum(1 for q in self.parsed.quarantine if q.resource_type == rtype),
            **self.as_metadata(),
        }


def parse_clinical_partition(
    zone: RawZone,
    objects: pd.DataFrame,
    writers: Mapping[str, TableWriter],
    *,
    partition: str,
    asset: str,
    part_rows: int = PART_ROWS,
    progress: Callable[[int], None] | None = None,
) -> ClinicalPartition:
    """Parse ``objects`` (stored-object ledger rows of one institution) into ``writers`` (one per table),
    commit every table (an empty one with its columns), and return the partition's counts.

    Raises :class:`~medllm_pipelines.lib.common.records.ReconciliationError` when the partition does not
    reconcile: a parser that loses or invents entries is a defect, not data.
    """
    result = ClinicalPartition(partition, files=len(objects), outcomes=FileOutcomes(asset))
    buffered: dict[str, list[dict[str, Any]]] = {table: [] for table in FHIR_TABLES}

    def flush(table: str, force: bool = False) -> None:
        rows = buffered[table]
        if rows and (force or len(rows) >= part_rows):
            writers[table].write(pd.DataFrame(rows))
            result.rows_by_table[table] += len(rows)
            buffered[table] = []

    for done, row in enumerate(objects.itertuples(index=False), start=1):
        for batch in parse_clinical_object(zone, row.content_sha256, row.file_kind, row.institution, asset):
            result.outcomes.add(
                row.content_sha256, row.institution, records_in=batch.resources_seen,
                records_out=batch.records_out, quarantine=batch.quarantine, removed_by_rule=batch.removals(),
            )
            if row.file_kind == FHIR_NDJSON:
                for rtype, n in batch.types_seen.items():
                    result.ndjson_types[rtype] = result.ndjson_types.get(rtype, 0) + n
            for table, rows in batch.rows.items():
                buffered[table].extend(rows)
                flush(table)
            batch.rows, batch.warnings = {}, []  # counts stay, rows and warning texts do not pile up
            result.parsed.extend(batch)
        if progress is not None:
            progress(done)
    for table in FHIR_TABLES:
        flush(table, force=True)
        if not result.rows_by_table[table]:
            writers[table].write(rows_to_frame(table, []))  # an empty partition still has the table's columns
        writers[table].commit()
    result.reconciliation()
    return result
