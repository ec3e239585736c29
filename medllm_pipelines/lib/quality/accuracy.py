"""Accuracy checks across records (clause 5.1.2.2, row D6): double verification of key
values, and near-duplicate patients across institutions.

Both return frames that name *records* (institution, resource key, source object
hash prefix + position) and pseudonymous keys, never names, ID numbers or dates:
they go to reviewers and into asset metadata.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

DISAGREEMENT_COLUMNS = [
    "person_ref",
    "concept",
    "unit",
    "record_a",
    "record_b",
    "institution_a",
    "institution_b",
    "days_apart",
    "abs_difference",
    "tolerance",
    "same_institution",
]

LINK_COLUMNS = [
    "link_key",
    "institution_a",
    "resource_key_a",
    "record_a",
    "institution_b",
    "resource_key_b",
    "record_b",
    "resident_id_status",
    "match_rule",
    "decision",
]

# Record linkage rule (stated, versioned with the code):
MATCH_RULE = (
    "same keyed HMAC-SHA-256 of (normalised name | ISO birth date) at two institutions; "
    "name = NFKC, case-folded, whitespace and punctuation removed, Latin name tokens sorted "
    "(so 'Zhang San' = 'San Zhang'); Chinese name preferred over Latin when present"
)
LINKED_BY_RESIDENT_ID = "linked: both records carry the same valid resident ID"
CANDIDATE_ONE_SIDED = "candidate: resident ID valid on one record only (missing or invalid on the other)"
CANDIDATE_NO_ID = "candidate: neither record carries a valid resident ID"
CONFLICT = "review: valid resident IDs differ (namesakes born the same day, or an ID error)"


def record_ref(source_object: Any, position: Any) -> str:
    """A record's address: the raw object's hash prefix and the position in it."""
    if source_object is None or (isinstance(source_object, float) and pd.isna(source_object)):
        return "unknown"
    pos = "" if position is None or pd.isna(position) else int(position)
    return f"{str(source_object)[:12]}#{pos}"


# --- double verification ----------------------------------------------------------
def find_disagreements(
    observations: pd.DataFrame,
    tolerances: dict[str, float],
    *,
    window_days: int = 0,
    person_of: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Pairs of results of one concept for one person within ``window_days`` that differ beyond tolerance.

    ``observations`` is a cleaned observations frame (canonical units):
    ``institution, patient_key, concept, unit, value, effective_date,
    resource_key, source_object, source_position``. ``person_of`` maps
    ``(institution, patient_key)`` to ``person_ref`` (a pseudonym or a linkage
    key) so two institutions' results for one person are compared; without it
    a person is one patient record at one institution (duplicate
    measurements). Concepts without a tolerance are not compared.
    """
    if observations.empty:
        return pd.DataFrame(columns=DISAGREEMENT_COLUMNS)
    frame = observations[observations["concept"].isin(list(tolerances))].copy()
    if person_of is not None and not person_of.empty:
        frame = frame.merge(person_of[["institution", "patient_key", "person_ref"]],
                            on=["institution", "patient_key"], how="left")
        missing = frame["person_ref"].isna()
        frame.loc[missing, "person_ref"] = frame.loc[missing, "institution"] + "/" + frame.loc[missing, "patient_key"]
    else:
        frame["person_ref"] = frame["institution"].astype(str) + "/" + frame["patient_key"].astype(str)
    frame["day"] = pd.to_datetime(frame["effective_date"], errors="coerce")
    frame = frame.dropna(subset=["day", "value"])
    frame["record"] = [record_ref(o, p) for o, p in zip(frame["source_object"], frame["source_position"], strict=True)]
    frame["row_id"] = range(len(frame))
    columns = ["person_ref", "concept", "unit", "value", "day", "institution", "record", "row_id"]
    pairs = frame[columns].merge(frame[columns], on=["person_ref", "concept"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["row_id_a"] < pairs["row_id_b"]]
    pairs["days_apart"] = (pairs["day_b"] - pairs["day_a"]).dt.days.abs()
    pairs = pairs[pairs["days_apart"] <= window_days]
    pairs["abs_difference"] = (pairs["value_a"] - pairs["value_b"]).abs().round(6)
    pairs["tolerance"] = pairs["concept"].map(tolerances).astype(float)
    pairs = pairs[pairs["abs_difference"] > pairs["tolerance"]]
    out = pd.DataFrame({
        "person_ref": pairs["person_ref"],
        "concept": pairs["concept"],
        "unit": pairs["unit_a"],
        "record_a": pairs["record_a"],
        "record_b": pairs["record_b"],
        "institution_a": pairs["institution_a"],
        "institution_b": pairs["institution_b"],
        "days_apart": pairs["days_apart"].astype(int),
        "abs_difference": pairs["abs_difference"],
        "tolerance": pairs["tolerance"],
        "same_institution": pairs["institution_a"] == pairs["institution_b"],
    }, columns=DISAGREEMENT_COLUMNS)
    return out.sort_values(["concept", "record_a", "record_b"]).reset_index(drop=True)


# --- record linkage ---------------------------------------------------------------
_PUNCTUATION = re.compile(r"[\s\W_]+", re.UNICODE)


def normalise_name(name_zh: Any, name_en: Any) -> str | None:
    """The linkage form of a name (see ``MATCH_RULE``); None when the record has no name."""
    for candidate, latin in ((name_zh, False), (name_en, True)):
        if candidate is None or (isinstance(candidate, float) and pd.isna(candidate)):
            continue
        text = unicodedata.normalize("NFKC", str(candidate)).casefold().strip()
        if not text:
            continue
        if latin:
            tokens = sorted(token for token in _PUNCTUATION.split(text) if token)
            return " ".join(tokens) or None
        return _PUNCTUATION.sub("", text) or None
    return None


def local_hmac(key: bytes) -> Callable[[Sequence[str]], list[str]]:
    """A batch keyed-hash function for tests and development (production: Vault transit ``hmac``)."""

    def keyed(values: Sequence[str]) -> list[str]:
        return [hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest() for value in values]

    return keyed


def link_patients(patients: pd.DataFrame, keyed_hash: Callable[[Sequence[str]], list[str]]) -> pd.DataFrame:
    """Near-duplicate patients across institutions, matched on pseudonymous keys (``MATCH_RULE``).

    ``patients`` is a cleaned patients frame (``institution, resource_key,
    name_zh, name_en, birth_date, resident_id, resident_id_valid,
    source_object, source_position``). ``keyed_hash`` maps a batch of strings
    to keyed hashes (the key never leaves Vault in production), so the output
    holds only the hash as ``link_key``. Each pair is classified by resident-ID
    status: both valid and equal -> linked; valid on one side only or on
    neither -> candidate (the near duplicates a resident-ID join misses);
    both valid but different -> review.
    """
    if patients.empty:
        return pd.DataFrame(columns=LINK_COLUMNS)
    frame = patients.copy()
    empty = pd.Series([None] * len(frame), index=frame.index)
    frame["link_name"] = [normalise_name(zh, en) for zh, en in zip(frame.get("name_zh", empty),
                                                                    frame.get("name_en", empty), strict=True)]
    frame = frame.dropna(subset=["link_name", "birth_date"])
    if frame.empty:
        return pd.DataFrame(columns=LINK_COLUMNS)
    frame["link_key"] = keyed_hash([f"{name}|{birth}" for name, birth in zip(frame["link_name"], frame["birth_date"],
                                                                              strict=True)])
    if "resident_id_valid" not in frame.columns:
        frame["resident_id_valid"] = False
    frame["valid_id"] = frame["resident_id"].where(frame["resident_id_valid"].fillna(False).astype(bool))
    frame["record"] = [record_ref(o, p) for o, p in zip(frame["source_object"], frame["source_position"], strict=True)]
    frame["row_id"] = range(len(frame))
    columns = ["link_key", "institution", "resource_key", "record", "valid_id", "row_id"]
    pairs = frame[columns].merge(frame[columns], on="link_key", suffixes=("_a", "_b"))
    pairs = pairs[(pairs["row_id_a"] < pairs["row_id_b"]) & (pairs["institution_a"] != pairs["institution_b"])]

    def classify(a: Any, b: Any) -> tuple[str, str]:
        has_a, has_b = isinstance(a, str), isinstance(b, str)
        if has_a and has_b:
            return ("both_valid_same", LINKED_BY_RESIDENT_ID) if a == b else ("both_valid_different", CONFLICT)
        if has_a or has_b:
            return "one_side_valid", CANDIDATE_ONE_SIDED
        return "neither_valid", CANDIDATE_NO_ID

    classified = [classify(a, b) for a, b in zip(pairs["valid_id_a"], pairs["valid_id_b"], strict=True)]
    out = pd.DataFrame({
        "link_key": pairs["link_key"],
        "institution_a": pairs["institution_a"],
        "resource_key_a": pairs["resource_key_a"],
        "record_a": pairs["record_a"],
        "institution_b": pairs["institution_b"],
        "resource_key_b": pairs["resource_key_b"],
        "record_b": pairs["record_b"],
        "resident_id_status": [status for status, _ in classified],
        "match_rule": MATCH_RULE,
        "decision": [decision for _, decision in classified],
    }, columns=LINK_COLUMNS)
    return out.sort_values(["link_key", "record_a", "record_b"]).reset_index(drop=True)


# --- what the cleaned tables report ---------------------------------------------------
# Columns of a disagreement that may appear in metadata: record addresses and sizes, no patient key, no value.
SAFE_DISAGREEMENT_COLUMNS = tuple(c for c in DISAGREEMENT_COLUMNS if c not in ("person_ref", "same_institution"))


def double_verification_details(observations: pd.DataFrame, verification: dict[str, Any], examples: int = 20) -> dict[str, Any]:
    """Repeated measurements of one concept that disagree beyond the declared tolerance (clause 5.1.2.2),
    counted and listed by record address, never averaged away; ``verification`` is the cleaning rules'
    ``double_verification`` block (tolerances per concept, window in days)."""
    tolerances = verification.get("tolerances", {})
    disagreements = find_disagreements(observations, tolerances, window_days=int(verification.get("window_days", 0)))
    safe = [c for c in SAFE_DISAGREEMENT_COLUMNS if c in disagreements.columns]
    return {
        "double_verification_disagreements": len(disagreements),
        "double_verification_examples": {
            "tolerances": tolerances,
            "records": disagreements.head(examples)[safe].astype(str).to_dict(orient="records") if len(disagreements) else [],
        },
    }


def near_duplicate_details(links: pd.DataFrame) -> dict[str, Any]:
    """Near-duplicate patient pairs (``link_patients``) counted by resident-ID status, with the match rule."""
    counts = links["resident_id_status"].value_counts().sort_index() if len(links) else pd.Series(dtype=int)
    return {
        "near_duplicate_pairs_by_status": {str(k): int(v) for k, v in counts.items()},
        "near_duplicate_match_rule": MATCH_RULE,
    }
