"""One parsed-feed type for every clinical feed (FHIR Bundles, Bulk NDJSON, HL7 v2).

A parser turns one landed file (or one streamed batch of it) into a
:class:`ParsedFeed`: rows per table (``tables.py``) plus everything set aside,
so that each entry read is accounted for exactly once - a row, a quarantine
record, a count under a declared rule (:data:`RULES`), or a re-sent copy
dropped. Warnings (accepted despite a finding, e.g. lenient HL7 reading) and
events (counted rows, e.g. erasure requests) are recorded beside, outside the
reconciliation. Bulk Data manifests found in a feed are kept to be checked
against what arrived (:func:`check_bulk_manifests`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.records import QuarantineRecord, Reconciliation
from medllm_pipelines.lib.ingest.tables import FHIR_TABLES

# Declared rules an entry can be set aside under (never lost: the raw object keeps it).
RULE_OUT_OF_SCOPE = "out_of_scope_resource_type"
RULE_REQUEST_ONLY = "request_only"
RULE_RESPONSE_ONLY = "response_only"
RULE_DELETE = "delete_request"
RULE_PATCH = "patch_request"
RULE_OPERATION_OUTCOME = "operation_outcome"
RULE_BULK_MANIFEST = "bulk_export_manifest"
RULES = (
    RULE_OUT_OF_SCOPE, RULE_REQUEST_ONLY, RULE_RESPONSE_ONLY, RULE_DELETE, RULE_PATCH, RULE_OPERATION_OUTCOME,
    RULE_BULK_MANIFEST,
)
# Counted events that are rows, not removals.
EVENT_ERASURE = codes.ERASURE_REQUEST
EVENT_R4_NORMALISED = "r4_elements_dropped_for_validation"
# A re-sent copy of a resource version already read (same id, versionId and content), dropped.
RULE_RESENT = "resent_resource"


@dataclass(frozen=True)
class FeedWarning:
    """An entry accepted despite a finding; ``reason`` names segments and fields, never values.

    ``position`` is the entry's position in its file (an HL7 message's index);
    ``record_type`` what the entry declared itself to be (``ADT^A01``, ``Patient``), when known.
    """

    position: int
    record_type: str | None
    code: str
    reason: str


@dataclass(frozen=True)
class BulkManifest:
    """What a Bulk Data ``$export`` manifest declares: resources per type, and error files."""

    declared: dict[str, int]  # resource type -> declared count (types whose count is given)
    undeclared_count_types: tuple[str, ...]  # output types listed without a count
    output_files: int
    error_files: int
    source_object: str


@dataclass
class ParsedFeed:
    """Rows per table plus what was set aside, from one clinical file or one batch of it.

    ``resources_seen`` counts every entry read (Bundle entry, non-blank NDJSON
    line, row source of an HL7 message) and each numeric component of a FHIR
    panel (a row of its own: ``fhir_mapping.observation_components``); each leaves as a row, a quarantine
    record, an out-of-scope count, a count under another declared rule
    (``removed_by_rule``) or - when re-send dropping is on - a ``resent`` count.
    ``out_of_scope`` stays a field of its own (HL7 parsing adds to it).
    ``messages_read`` (HL7: framed messages) and ``warnings`` do not enter the
    reconciliation: a message's rows are out whatever it was warned about.
    """

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in FHIR_TABLES})
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    out_of_scope: int = 0
    resources_seen: int = 0
    resent: int = 0
    removed_by_rule: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # counted, not removals (e.g. erasure requests)
    types_seen: dict[str, int] = field(default_factory=dict)  # resourceType -> entries (manifest checks)
    out_of_scope_by_type: dict[str, int] = field(default_factory=dict)  # resourceType -> entries no table holds
    manifests: list[BulkManifest] = field(default_factory=list)
    messages_read: int = 0
    warnings: list[FeedWarning] = field(default_factory=list)
    warnings_by_code: dict[str, int] = field(default_factory=dict)

    def extend(self, other: ParsedFeed) -> None:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        self.quarantine.extend(other.quarantine)
        self.out_of_scope += other.out_of_scope
        self.resources_seen += other.resources_seen
        self.resent += other.resent
        self.messages_read += other.messages_read
        for mine, theirs in ((self.removed_by_rule, other.removed_by_rule), (self.events, other.events),
                             (self.types_seen, other.types_seen), (self.out_of_scope_by_type, other.out_of_scope_by_type),
                             (self.warnings_by_code, other.warnings_by_code)):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count
        self.manifests.extend(other.manifests)
        self.warnings.extend(other.warnings)

    def add_warnings(self, warnings: Iterable[FeedWarning]) -> None:
        for warning in warnings:
            self.warnings.append(warning)
            self.warnings_by_code[warning.code] = self.warnings_by_code.get(warning.code, 0) + 1

    def count(self, rule: str) -> None:
        """One entry set aside under a declared rule."""
        if rule == RULE_OUT_OF_SCOPE:
            self.out_of_scope += 1
        else:
            self.removed_by_rule[rule] = self.removed_by_rule.get(rule, 0) + 1

    def removals(self) -> dict[str, int]:
        """Every declared rule with its count (out of scope and re-sent copies included)."""
        removed = {RULE_OUT_OF_SCOPE: self.out_of_scope, **self.removed_by_rule}
        if self.resent:
            removed[RULE_RESENT] = self.resent
        return removed

    @property
    def records_out(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def reconciliation(self) -> Reconciliation:
        """in = out + quarantined + set aside by rule + re-sent copies dropped (raises when it does not hold)."""
        return Reconciliation(self.resources_seen, self.records_out, len(self.quarantine), self.removals()).check()


@dataclass
class ManifestCheck:
    """Bulk Data manifests of one feed against what arrived: declared vs. read resources per type.

    ``arrived`` counts the entries of each resourceType read from the feed's
    NDJSON files (valid or not: a quarantined line arrived too). A type whose
    declared count differs is a mismatch: a lost or truncated export file, or a
    page sent twice. Types listed without a count cannot be checked and are named.
    """

    declared: dict[str, int]
    arrived: dict[str, int]
    manifests: int
    error_files: int
    types_without_count: list[str]

    @property
    def mismatches(self) -> dict[str, dict[str, int]]:
        return {
            rtype: {"declared": count, "arrived": self.arrived.get(rtype, 0)}
            for rtype, count in sorted(self.declared.items())
            if self.arrived.get(rtype, 0) != count
        }

    def as_metadata(self) -> dict[str, Any]:
        return {
            "bulk_manifests": self.manifests,
            "bulk_declared_by_type": dict(sorted(self.declared.items())),
            "bulk_arrived_by_type": {t: self.arrived.get(t, 0) for t in sorted(self.declared)},
            "bulk_count_mismatches": self.mismatches,
            "bulk_types_without_count": self.types_without_count,
            "bulk_error_files_declared": self.error_files,
            "bulk_counts_match": not self.mismatches,
        }


def check_bulk_manifests(manifests: Iterable[BulkManifest], arrived: dict[str, int]) -> ManifestCheck:
    """Sum what every manifest of a feed declares and compare it with the NDJSON entries read per type."""
    declared: dict[str, int] = {}
    without: set[str] = set()
    count = errors = 0
    for manifest in manifests:
        count += 1
        errors += manifest.error_files
        without.update(manifest.undeclared_count_types)
        for rtype, n in manifest.declared.items():
            declared[rtype] = declared.get(rtype, 0) + n
    return ManifestCheck(declared, dict(arrived), count, errors, sorted(without - set(declared)))
