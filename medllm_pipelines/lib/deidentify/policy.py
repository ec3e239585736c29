"""Apply the versioned de-identification policy (``deidentify_policy.yaml``).

The policy is data, the code only interprets it (pydicom/deid and Presidio
keep rules apart from engines the same way). Only declared columns cross the
boundary; everything else is dropped and reported.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medllm_pipelines.lib.deidentify.recoding import (
    RecodingStep,
    suppress_value,
    widen_age_band,
)
from medllm_pipelines.lib.quality.cleaning import resident_id_is_valid

POLICY_PATH = Path(__file__).with_name("deidentify_policy.yaml")
PURPOSE_ENV = "MEDLLM_PURPOSE"  # where a deployment sets the purpose (settings.py); named in error messages

HmacMany = Callable[[Sequence[str]], Sequence[str]]


@dataclass(frozen=True)
class ColumnRule:
    column: str
    action: str  # keep | pseudonymise | generalise | remove
    argument: str | None
    output: str


@dataclass(frozen=True)
class DisclosureRule:
    """What must be k-anonymous in one released table, and how rare rows are coarsened."""

    table: str
    quasi_identifiers: tuple[str, ...]
    steps: tuple[RecodingStep, ...]
    sensitive: str | None = None


@dataclass(frozen=True)
class Policy:
    version: str
    purpose: str
    pseudonym_prefix: str
    pseudonym_hex_chars: int
    age_band_width: int
    age_top_code: int
    tables: dict[str, tuple[ColumnRule, ...]]
    disclosure: dict[str, DisclosureRule] = field(default_factory=dict)
    purpose_id: str = "default"
    purposes: tuple[str, ...] = ("default",)


def _rule(column: str, spec: Any) -> ColumnRule:
    if isinstance(spec, str):
        if spec not in {"keep", "remove"}:
            raise ValueError(f"policy: column {column}: unknown action {spec!r}")
        return ColumnRule(column, spec, None, column)
    spec = dict(spec)
    output = spec.pop("as", column)
    if len(spec) != 1:
        raise ValueError(f"policy: column {column}: exactly one action expected")
    action, argument = next(iter(spec.items()))
    if action not in {"keep", "pseudonymise", "generalise"}:
        raise ValueError(f"policy: column {column}: unknown action {action!r}")
    return ColumnRule(column, action, None if argument is True else str(argument), output)


def _recoding_step(table: str, spec: Any, top: int) -> RecodingStep:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"policy: disclosure_control.{table}: each step is one {{column: action}}")
    column, action = next(iter(spec.items()))
    if action == "suppress":
        return RecodingStep(column, "suppress", suppress_value)
    if isinstance(action, dict) and set(action) == {"widen_age_band"}:
        width = int(action["widen_age_band"])
        if width < 1:
            raise ValueError(f"policy: disclosure_control.{table}: band width must be positive")
        return RecodingStep(column, f"widen_age_band_{width}", lambda band: widen_age_band(band, width, top))
    raise ValueError(f"policy: disclosure_control.{table}: unknown recoding {action!r} for {column}")


def _disclosure_rules(raw: dict[str, Any], tables: dict[str, tuple[ColumnRule, ...]], top: int) -> dict[str, DisclosureRule]:
    rules = {}
    for table, spec in (raw.get("disclosure_control") or {}).items():
        if table not in tables:
            raise ValueError(f"policy: disclosure_control names an undeclared table {table!r}")
        outputs = {r.output for r in tables[table] if r.action != "remove"}
        qis = tuple(spec.get("quasi_identifiers") or ())
        sensitive = spec.get("sensitive")
        steps = tuple(_recoding_step(table, step, top) for step in spec.get("recode_in_order") or ())
        unknown = sorted({*qis, *([sensitive] if sensitive else [])} - outputs)
        if not qis or unknown:
            raise ValueError(f"policy: disclosure_control.{table}: quasi-identifiers must be released columns "
                             f"(unknown: {unknown})")
        if {s.column for s in steps} - set(qis):
            raise ValueError(f"policy: disclosure_control.{table}: only quasi-identifiers are recoded")
        rules[table] = DisclosureRule(table, qis, steps, sensitive)
    return rules


def _purposes(raw: dict[str, Any], tables: dict[str, tuple[ColumnRule, ...]]) -> tuple[str, dict[str, Any]]:
    """``(default id, {id: {"description", "columns": {table: allowed source columns} or None}})``."""
    if "purposes" not in raw:  # a single-purpose policy file
        return "default", {"default": {"description": str(raw["purpose"]), "columns": None}}
    purposes: dict[str, Any] = {}
    for purpose_id, spec in raw["purposes"].items():
        allowed = spec.get("columns")
        if allowed is not None:
            for table, columns in allowed.items():
                if table not in tables:
                    raise ValueError(f"policy: purpose {purpose_id}: undeclared table {table!r}")
                unknown = sorted(set(columns) - {r.column for r in tables[table]})
                if unknown:
                    raise ValueError(f"policy: purpose {purpose_id}: {table} has no declared column(s) {unknown}")
            allowed = {table: frozenset(allowed.get(table, ())) for table in tables}
        purposes[str(purpose_id)] = {"description": str(spec["description"]), "columns": allowed}
    default = str(raw.get("default_purpose", next(iter(purposes))))
    if default not in purposes:
        raise ValueError(f"policy: default_purpose {default!r} is not declared")
    return default, purposes


def load_policy(path: Path = POLICY_PATH, purpose: str | None = None) -> Policy:
    """The policy as it applies to ``purpose`` (None: the file's ``default_purpose``).

    The caller says which purpose a run processes data for (assets: the
    ``run_settings`` resource; the CLI: ``Settings.purpose``), so that this
    library never reads the environment. Data minimisation per purpose: a
    purpose that lists its columns lets only those cross; every other column
    is treated as undeclared (dropped and reported). Direct identifiers stay
    ``remove`` rules whatever the purpose.
    """
    return _load_policy(Path(path), purpose or None)


@lru_cache(maxsize=8)
def _load_policy(path: Path, purpose: str | None) -> Policy:
    raw = yaml.safe_load(Path(path).read_text())
    tables = {
        table: tuple(_rule(column, spec) for column, spec in columns.items())
        for table, columns in raw["tables"].items()
    }
    default, purposes = _purposes(raw, tables)
    chosen = purpose or default
    if chosen not in purposes:
        raise ValueError(f"unknown processing purpose {chosen!r} ({PURPOSE_ENV}); the policy declares "
                         f"{', '.join(sorted(purposes))}")
    allowed = purposes[chosen]["columns"]
    disclosure = _disclosure_rules(raw, tables, int(raw["age_bands"]["top_coded_at"]))
    if allowed is not None:
        tables = {table: tuple(r for r in rules if r.action == "remove" or r.column in allowed[table])
                  for table, rules in tables.items()}
    return Policy(
        version=str(raw["version"]),
        purpose=purposes[chosen]["description"],
        purpose_id=chosen,
        purposes=tuple(purposes),
        pseudonym_prefix=str(raw["pseudonym"]["prefix"]),
        pseudonym_hex_chars=int(raw["pseudonym"]["hex_chars"]),
        age_band_width=int(raw["age_bands"]["width_years"]),
        age_top_code=int(raw["age_bands"]["top_coded_at"]),
        tables=tables,
        disclosure={table: rule for table, rule in disclosure.items()
                    if set(rule.quasi_identifiers) <= {r.output for r in tables[table] if r.action != "remove"}},
    )


# --- pseudonyms ---------------------------------------------------------------
def digest_to_hex(digest: str) -> str:
    """Vault returns HMACs as ``vault:vN:<base64>``; accept that, bare base64 or hex."""
    text = digest.rsplit(":", 1)[-1] if digest.startswith("vault:") else digest
    if all(c in "0123456789abcdef" for c in text) and len(text) >= 32:
        return text
    try:
        return base64.b64decode(text, validate=True).hex()
    except (binascii.Error, ValueError) as exc:
        raise ValueError("unrecognised HMAC digest format") from exc


def person_link_basis(institution: str, resident_id: str | None, mrn: str | None, patient_key: str) -> str:
    """What identifies a person for linkage: resident ID across sites, else the site's MRN."""
    if resident_id and resident_id_is_valid(resident_id):
        return f"resident-id:{resident_id.upper()}"
    if mrn:
        return f"mrn:{institution}:{mrn}"
    return f"record:{institution}:{patient_key}"


def keyed_pseudonyms(values: Sequence[str], hmac_many: HmacMany, policy: Policy) -> list[str]:
    """HMAC-SHA-256 (key held in Vault) of each value, formatted as a pseudonym."""
    if not values:
        return []
    unique = sorted(set(values))
    digests = hmac_many(unique)
    mapping = {
        value: policy.pseudonym_prefix + digest_to_hex(digest)[: policy.pseudonym_hex_chars]
        for value, digest in zip(unique, digests, strict=True)
    }
    return [mapping[v] for v in values]


def build_pseudonym_map(patients: pd.DataFrame, hmac_many: HmacMany, policy: Policy) -> pd.DataFrame:
    """(institution, patient_key, mrn) -> person pseudonym. Identifiable: raw zone only."""
    basis = [
        person_link_basis(r.institution, r.resident_id, r.mrn, r.resource_key)
        for r in patients[["institution", "resident_id", "mrn", "resource_key"]].itertuples(index=False)
    ]
    frame = pd.DataFrame(
        {
            "institution": patients["institution"].to_numpy(),
            "patient_key": patients["resource_key"].to_numpy(),
            "mrn": patients["mrn"].to_numpy(),
            "link_kind": [b.split(":", 1)[0] for b in basis],
            "patient_pseudonym": keyed_pseudonyms(basis, hmac_many, policy),
        }
    )
    return frame


# --- generalisers -------------------------------------------------------------
def age_in_years(birth: dt.date, as_of: dt.date) -> int:
    return as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))


def age_band(age: int, width: int = 5, top: int = 90) -> str:
    if age >= top:
        return f"{top}+"
    low = (max(age, 0) // width) * width
    return f"{low}-{low + width - 1}"


def _year(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.astype("string").str[:4], errors="coerce").astype("Int64")


# --- applying the policy ------------------------------------------------------
@dataclass
class PolicyOutcome:
    frame: pd.DataFrame
    removed_columns: list[str]
    undeclared_columns: list[str]
    unlinked_rows: int = 0
    kept_index: pd.Index | None = None  # source rows that crossed, aligned with ``frame``
    details: dict[str, Any] = field(default_factory=dict)


def apply_policy(
    table: str,
    frame: pd.DataFrame,
    policy: Policy,
    *,
    person_by_key: dict[tuple[str, str], str],
    person_by_mrn: dict[tuple[str, str], str] | None = None,
    hmac_many: HmacMany | None = None,
    age_reference: pd.Series | None = None,
) -> PolicyOutcome:
    """Produce the de-identified version of ``frame``.

    Rows whose person cannot be linked to a pseudonym are dropped (and
    counted): a row without a pseudonym has no lawful place downstream.
    """
    rules = policy.tables[table]
    declared = {r.column for r in rules}
    undeclared = sorted(c for c in frame.columns if c not in declared)
    out = pd.DataFrame(index=frame.index)
    removed: list[str] = []
    linked = pd.Series(True, index=frame.index)
    for rule in rules:
        if rule.column not in frame.columns:
            continue
        source = frame[rule.column]
        if rule.action == "remove":
            removed.append(rule.column)
        elif rule.action == "keep":
            out[rule.output] = source
        elif rule.action == "pseudonymise":
            if rule.argument == "person":
                mapped = [person_by_key.get((i, k)) for i, k in zip(frame["institution"], source, strict=True)]
            elif rule.argument == "person_by_mrn":
                lookup = person_by_mrn or {}
                mapped = [lookup.get((i, k)) for i, k in zip(frame["institution"], source, strict=True)]
            elif rule.argument == "keyed_hash":
                if hmac_many is None:
                    raise ValueError("keyed_hash pseudonymisation needs the Vault HMAC")
                mapped = keyed_pseudonyms([str(v) for v in source], hmac_many, policy)
            else:
                raise ValueError(f"policy: unknown pseudonymiser {rule.argument!r}")
            series = pd.Series(mapped, index=frame.index, dtype="object")
            linked &= series.notna()
            out[rule.output] = series
        elif rule.action == "generalise":
            if rule.argument == "year":
                out[rule.output] = _year(source)
            elif rule.argument == "age_band":
                reference = age_reference if age_reference is not None else pd.Series(dt.date.today(), index=frame.index)
                out[rule.output] = [
                    age_band(age_in_years(dt.date.fromisoformat(b), r), policy.age_band_width, policy.age_top_code)
                    if isinstance(b, str)
                    else None
                    for b, r in zip(source, reference, strict=True)
                ]
            else:
                raise ValueError(f"policy: unknown generaliser {rule.argument!r}")
    unlinked = int((~linked).sum())
    kept = out.index[linked]
    out = out[linked].reset_index(drop=True)
    return PolicyOutcome(out, removed, undeclared, unlinked, kept)
