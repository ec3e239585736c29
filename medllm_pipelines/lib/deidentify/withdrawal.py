"""Propagating consent withdrawal (clause 5.4.1.5-6, row S5).

A withdrawn person must leave every derived dataset and the *next* model
version. Two halves:

* :func:`filter_to_consented` keeps only persons whose current consent is
  ``granted``; every derived frame goes through it (persons without a consent
  record are ``unknown`` and excluded, as at labelling).
* :func:`models_needing_retraining` compares the current registry with the
  membership of each training dataset version (which pseudonyms it held) and
  lists the model versions trained on someone who has since withdrawn.

Membership files (one per dataset version, JSON, pseudonyms only) are what
make the second half possible after the fact: write one whenever a training
dataset version is built (:func:`save_membership`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.common.files import write_private_atomic

__all__ = [
    "ConsentFilterResult",
    "RetrainingNeed",
    "consent_status_of",
    "filter_to_consented",
    "load_memberships",
    "models_needing_retraining",
    "save_membership",
    "withdrawn_pseudonyms",
]

PSEUDONYM_COLUMN = "patient_pseudonym"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def consent_status_of(consent_registry: pd.DataFrame) -> dict[str, str]:
    """pseudonym -> current consent status."""
    missing = {PSEUDONYM_COLUMN, "consent_status"} - set(consent_registry.columns)
    if missing:
        raise ValueError(f"the consent registry lacks columns {sorted(missing)}")
    duplicated = consent_registry[PSEUDONYM_COLUMN].duplicated()
    if duplicated.any():
        raise ValueError(f"the consent registry has {int(duplicated.sum())} duplicate pseudonym rows")
    return dict(zip(consent_registry[PSEUDONYM_COLUMN].astype(str), consent_registry["consent_status"].astype(str),
                    strict=True))


def withdrawn_pseudonyms(consent_registry: pd.DataFrame) -> frozenset[str]:
    return frozenset(p for p, s in consent_status_of(consent_registry).items() if s == codes.CONSENT_WITHDRAWN)


@dataclass
class ConsentFilterResult:
    frame: pd.DataFrame
    rows_in: int
    rows_removed: int
    persons_removed: int
    removed_by_status: dict[str, int]  # persons removed per consent status

    def as_metadata(self) -> dict[str, Any]:
        return {"consent_rows_in": self.rows_in, "consent_rows_removed": self.rows_removed,
                "consent_persons_removed": self.persons_removed,
                **{f"consent_removed[{k}]": v for k, v in sorted(self.removed_by_status.items())}}


def filter_to_consented(
    frame: pd.DataFrame, consent_registry: pd.DataFrame, *, pseudonym_column: str = PSEUDONYM_COLUMN
) -> ConsentFilterResult:
    """Rows of persons whose current consent is ``granted``; the rest are counted by status."""
    if pseudonym_column not in frame.columns:
        raise ValueError(f"the frame has no {pseudonym_column!r} column to filter consent on")
    status = consent_status_of(consent_registry)
    person_status = frame[pseudonym_column].map(lambda p: status.get(str(p), codes.CONSENT_UNKNOWN)
                                                if pd.notna(p) else codes.CONSENT_UNKNOWN)
    keep = person_status == codes.CONSENT_GRANTED
    removed = frame.loc[~keep, pseudonym_column]
    removed_status = person_status[~keep]
    persons = pd.DataFrame({"p": removed.astype("string").fillna("<missing>"), "s": removed_status})
    by_status = persons.drop_duplicates("p")["s"].value_counts().to_dict()
    return ConsentFilterResult(
        frame=frame.loc[keep].reset_index(drop=True),
        rows_in=len(frame),
        rows_removed=int((~keep).sum()),
        persons_removed=int(persons["p"].nunique()),
        removed_by_status={str(k): int(v) for k, v in by_status.items()},
    )


@dataclass(frozen=True)
class RetrainingNeed:
    """A model version trained on persons who no longer consent."""

    model_version: str
    dataset_version: str
    withdrawn: int  # members whose consent is now withdrawn
    not_consented: int  # members not currently granted (withdrawn, refused, unknown)

    def as_metadata(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "dataset_version": self.dataset_version,
                "withdrawn_members": self.withdrawn, "not_consented_members": self.not_consented}


def models_needing_retraining(
    consent_registry: pd.DataFrame,
    dataset_membership: Mapping[str, Iterable[str]],
    trained_on: Mapping[str, str],
) -> list[RetrainingNeed]:
    """Model versions whose training data held a person who has since withdrawn.

    Args:
        consent_registry: ``patient_pseudonym, consent_status`` (current state).
        dataset_membership: dataset version -> pseudonyms it contained.
        trained_on: model version -> the dataset version it was trained on.

    A model whose dataset version has no membership record is reported too
    (``withdrawn = not_consented = -1``): without membership nobody can show it
    is clean, so it must be retrained or its membership reconstructed.
    """
    status = consent_status_of(consent_registry)
    members = {version: set(pseudonyms) for version, pseudonyms in dataset_membership.items()}
    needs: list[RetrainingNeed] = []
    for model_version, dataset_version in sorted(trained_on.items()):
        if dataset_version not in members:
            needs.append(RetrainingNeed(model_version, dataset_version, -1, -1))
            continue
        states = [status.get(p, codes.CONSENT_UNKNOWN) for p in members[dataset_version]]
        withdrawn = sum(s == codes.CONSENT_WITHDRAWN for s in states)
        if withdrawn:
            not_consented = sum(s != codes.CONSENT_GRANTED for s in states)
            needs.append(RetrainingNeed(model_version, dataset_version, withdrawn, not_consented))
    return needs


# --- membership files -------------------------------------------------------------
def save_membership(folder: str | os.PathLike[str], dataset_version: str, pseudonyms: Iterable[str]) -> Path:
    """Record which persons a training dataset version holds (idempotent).

    Pseudonyms only (de-identified zone). A second write of the same version
    with different members is refused: a dataset version is immutable.
    """
    if not _VERSION.fullmatch(dataset_version):
        raise ValueError(f"invalid dataset version {dataset_version!r}")
    members = sorted({str(p) for p in pseudonyms if pd.notna(p)})
    digest = hashlib.sha256("\n".join(members).encode("utf-8")).hexdigest()
    path = Path(folder) / f"{dataset_version}.json"
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing.get("members_sha256") != digest:
            raise ValueError(f"membership of dataset version {dataset_version!r} is already recorded with other members")
        return path
    payload = {"dataset_version": dataset_version, "members": members, "count": len(members), "members_sha256": digest}
    write_private_atomic(path, json.dumps(payload, indent=0))
    return path


def load_memberships(folder: str | os.PathLike[str]) -> dict[str, frozenset[str]]:
    """dataset version -> pseudonyms, from every membership file (each checked against its digest)."""
    out: dict[str, frozenset[str]] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        members = sorted(payload["members"])
        if hashlib.sha256("\n".join(members).encode("utf-8")).hexdigest() != payload.get("members_sha256"):
            raise ValueError(f"membership file {path.name} does not match its digest")
        out[str(payload["dataset_version"])] = frozenset(members)
    return out
