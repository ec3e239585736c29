"""Typed records that cross stage boundaries, and the reconciliation rule."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import pandas as pd

QUARANTINE_COLUMNS = [
    "stage",
    "asset",
    "institution",
    "source_object",
    "position",
    "resource_type",
    "reason_code",
    "reason",
]


@dataclass(frozen=True)
class QuarantineRecord:
    """A record set aside with the reason why. Never carries record values.

    ``source_object`` is the content hash of the raw-zone object the record came
    from and ``position`` its entry index / line number inside it, so the
    record can be found (decrypted) by an authorised person, while this row
    itself holds no personal data.
    """

    stage: str
    asset: str
    institution: str | None
    source_object: str | None
    position: int | None
    resource_type: str | None
    reason_code: str
    reason: str

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def count_reasons(records: Iterable[QuarantineRecord], counts: dict[str, int] | None = None) -> dict[str, int]:
    """``counts`` (a new dict when None) with one more for each record's reason code; returned."""
    counts = {} if counts is None else counts
    for record in records:
        counts[record.reason_code] = counts.get(record.reason_code, 0) + 1
    return counts


def quarantine_frame(records: list[QuarantineRecord]) -> pd.DataFrame:
    frame = pd.DataFrame([r.as_row() for r in records], columns=QUARANTINE_COLUMNS)
    frame["position"] = frame["position"].astype("Int64")
    return frame


@dataclass
class Reconciliation:
    """in = out + quarantined (+ removed by a declared rule), per stage."""

    records_in: int
    records_out: int
    quarantined: int = 0
    removed_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return sum(self.removed_by_rule.values())

    @property
    def balanced(self) -> bool:
        return self.records_in == self.records_out + self.quarantined + self.removed

    def check(self) -> Reconciliation:
        if not self.balanced:
            raise ReconciliationError(
                f"records do not reconcile: in={self.records_in} out={self.records_out} "
                f"quarantined={self.quarantined} removed={self.removed_by_rule}"
            )
        return self

    def as_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "records_quarantined": self.quarantined,
            "reconciled": self.balanced,
        }
        for rule, count in sorted(self.removed_by_rule.items()):
            meta[f"removed[{rule}]"] = count
        return meta


class ReconciliationError(RuntimeError):
    """A stage lost or invented records."""


def frame_content_hash(frame: pd.DataFrame) -> str:
    """Order-independent SHA-256 of a table's content and column names.

    Used as the dataset version: two materialisations with the same rows have
    the same hash whatever the row order.
    """
    columns = sorted(frame.columns)
    row_hashes = pd.util.hash_pandas_object(frame[columns].astype("string"), index=False)
    digest = hashlib.sha256(orjson.dumps(columns))
    digest.update(row_hashes.sort_values().to_numpy().tobytes())
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILE_OUTCOME_COLUMNS = [
    "asset",
    "institution",
    "source_object",
    "records_in",
    "records_out",
    "records_quarantined",
    "records_removed",
    "removed_by_rule",
    "quarantined_by_reason",
]


@dataclass
class FileOutcome:
    """What became of the records of one raw-zone object in one asset (in = out + quarantined + removed)."""

    source_object: str
    institution: str | None
    records_in: int = 0
    records_out: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    removed_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def removed(self) -> int:
        return sum(self.removed_by_rule.values())

    @property
    def balanced(self) -> bool:
        return self.records_in == self.records_out + self.quarantined + self.removed


class FileOutcomes:
    """Per-file accounting of one asset, so that every landed file can be traced to its records.

    An ingest asset adds, for each raw-zone object it reads, the entries it
    read, the rows it wrote, what it quarantined (by reason) and what it set
    aside under a declared rule (out of scope, request-only, re-sent copies).
    Only content hashes and counts are kept: nothing that identifies a person.
    """

    def __init__(self, asset: str) -> None:
        self.asset = asset
        self._by_object: dict[str, FileOutcome] = {}

    def of(self, source_object: str, institution: str | None) -> FileOutcome:
        outcome = self._by_object.get(source_object)
        if outcome is None:
            outcome = self._by_object[source_object] = FileOutcome(source_object, institution)
        return outcome

    def add(
        self,
        source_object: str,
        institution: str | None,
        *,
        records_in: int = 0,
        records_out: int = 0,
        quarantine: list[QuarantineRecord] | tuple[QuarantineRecord, ...] = (),
        removed_by_rule: dict[str, int] | None = None,
    ) -> FileOutcome:
        outcome = self.of(source_object, institution)
        outcome.records_in += records_in
        outcome.records_out += records_out
        count_reasons(quarantine, outcome.quarantined_by_reason)
        for rule, count in (removed_by_rule or {}).items():
            if count:
                outcome.removed_by_rule[rule] = outcome.removed_by_rule.get(rule, 0) + int(count)
        return outcome

    def __iter__(self):
        return iter(self._by_object.values())

    def __len__(self) -> int:
        return len(self._by_object)

    def unbalanced(self) -> list[FileOutcome]:
        return [o for o in self._by_object.values() if not o.balanced]

    def frame(self) -> pd.DataFrame:
        rows = [
            {
                "asset": self.asset,
                "institution": o.institution,
                "source_object": o.source_object,
                "records_in": o.records_in,
                "records_out": o.records_out,
                "records_quarantined": o.quarantined,
                "records_removed": o.removed,
                "removed_by_rule": orjson.dumps(dict(sorted(o.removed_by_rule.items()))).decode(),
                "quarantined_by_reason": orjson.dumps(dict(sorted(o.quarantined_by_reason.items()))).decode(),
            }
            for o in sorted(self._by_object.values(), key=lambda o: o.source_object)
        ]
        frame = pd.DataFrame(rows, columns=FILE_OUTCOME_COLUMNS)
        counts = ["records_in", "records_out", "records_quarantined", "records_removed"]
        return frame.astype({**{c: "int64" for c in counts}, **{c: "string" for c in FILE_OUTCOME_COLUMNS if c not in counts}})


def reconciliation_by_institution(
    records_in: pd.DataFrame, records_out: pd.DataFrame, quarantine: list[QuarantineRecord]
) -> dict[str, dict[str, int]]:
    """Per institution: in, out, quarantined, and removed by declared rules (the remainder).

    The rule removals are counted exactly per rule at the stage level
    (``Reconciliation``); per institution they are what is left, and a
    negative remainder would mean records were invented, which is refused.
    """
    def counts(frame: pd.DataFrame) -> dict[str, int]:
        if frame.empty or "institution" not in frame.columns:
            return {}
        return {str(k): int(v) for k, v in frame["institution"].fillna("<none>").value_counts().items()}

    seen_in, seen_out = counts(records_in), counts(records_out)
    held: dict[str, int] = {}
    for record in quarantine:
        key = record.institution or "<none>"
        held[key] = held.get(key, 0) + 1
    result = {}
    for institution in sorted(set(seen_in) | set(seen_out) | set(held)):
        n_in, n_out, n_held = seen_in.get(institution, 0), seen_out.get(institution, 0), held.get(institution, 0)
        removed = n_in - n_out - n_held
        if removed < 0:
            raise ValueError(f"institution {institution}: more records out than in")
        result[institution] = {"in": n_in, "out": n_out, "quarantined": n_held, "removed": removed}
    return result
