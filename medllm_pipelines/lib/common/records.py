"""Typed records that cross stage boundaries, and the reconciliation rule."""

from __future__ import annotations

import hashlib
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
