"""Rotation of the data-key wrapping key without losing a record (clause 5.4.2.4, row S7).

Rotating a transit key adds a version; old versions still decrypt until
retired. So a rotation is: (1) ``rotate_key`` in Vault, (2) rewrap the wrapped
data key in every envelope header (:func:`envelope.rewrap_file`; the data is
copied, never decrypted, and Vault never sees it), (3) only when every holder of
a ciphertext under the key is rewrapped, retire the old versions
(:func:`retire_old_versions`). Step 2 is idempotent: an envelope already at the
latest version is left untouched, so an interrupted run is simply rerun.

"No record lost" is checked, not assumed: before and after each rewrap the
wrapped key is unwrapped and the two data keys must be identical, and the
encrypted body must keep its length. (The data keys exist only in memory,
for the comparison, as they do in every process that reads the raw zone.)

Fail closed: an unreachable, sealed or refusing Vault stops the run with a
``VaultError`` that says how far it got; nothing is ever written in plaintext,
and a half-rewrapped file cannot exist (rewrap replaces files atomically).

Holders of ciphertexts under the raw-zone key, all of which must be rewrapped
before retiring: the raw zone (objects and tables), exports, the principals
registry (:meth:`PrincipalRegistry.rewrap_secrets`) and the warehouse column
``audit.file_ledger.source_path_ciphertext`` (:func:`rewrap_ciphertexts`).
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medllm_pipelines.lib.security.envelope import (
    MAGIC,
    read_header,
    rewrap_file,
    wrapped_key_version,
)
from medllm_pipelines.lib.security.errors import (
    DataKeyUnwrapError,
    EnvelopeIntegrityError,
    SecurityError,
    VaultError,
)

__all__ = [
    "ColumnRewrapReport",
    "EnvelopeCensus",
    "RewrapReport",
    "RotationError",
    "RotationReport",
    "envelope_census",
    "retire_old_versions",
    "rewrap_ciphertexts",
    "EnvelopeHolder",
    "rewrap_folder",
    "rewrap_paths",
    "rewrap_warehouse_column",
    "rotate_and_rewrap",
]



class RotationError(SecurityError):
    """The rotation cannot continue or cannot be completed safely."""


class EnvelopeHolder(Protocol):
    """Something that keeps envelopes outside files (the principals registry) and rewraps them itself."""

    def rewrap_secrets(self, rewrap: Callable[[str], str]) -> int:
        """Rewrap every envelope held; return how many changed."""
        ...


@dataclass
class RewrapReport:
    """Counts per folder; paths are relative and name no content."""

    root: str
    key_ref: str
    target_version: int | None = None
    files_seen: int = 0
    envelopes: int = 0
    rewrapped: int = 0
    already_current: int = 0
    verified: int = 0
    other_key: int = 0
    not_envelopes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every envelope under the key is now at the latest version."""
        return not self.failed and self.rewrapped + self.already_current == self.envelopes

    def as_metadata(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "envelopes": self.envelopes,
            "rewrapped": self.rewrapped,
            "already_current": self.already_current,
            "verified": self.verified,
            "other_key": self.other_key,
            "not_envelopes": self.not_envelopes,
            "failed": len(self.failed),
        }


@dataclass
class RotationReport:
    key_ref: str
    old_version: int
    new_version: int
    folders: list[RewrapReport]
    principals_rewrapped: int = 0
    seconds: float = 0.0

    @property
    def envelopes(self) -> int:
        return sum(r.envelopes for r in self.folders)

    @property
    def rewrapped(self) -> int:
        return sum(r.rewrapped for r in self.folders)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(f"{r.root}/{path}", why) for r in self.folders for path, why in r.failed]

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.folders)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "key_ref": self.key_ref,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "envelopes": self.envelopes,
            "rewrapped": self.rewrapped,
            "already_current": sum(r.already_current for r in self.folders),
            "verified": sum(r.verified for r in self.folders),
            "failed": len(self.failed),
            "principals_rewrapped": self.principals_rewrapped,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
        }


def rewrap_ciphertexts(values: Iterable[str | None], rewrap: Callable[[str], str]) -> tuple[list[str | None], int]:
    """Rewrap ``vault:vN:`` values (e.g. a warehouse column); returns (new values, how many changed)."""
    out: list[str | None] = []
    changed = 0
    for value in values:
        if value is None or not str(value).startswith("vault:"):
            out.append(value)
            continue
        new = rewrap(str(value))
        changed += int(wrapped_key_version(new) != wrapped_key_version(str(value)))
        out.append(new)
    return out, changed


def rewrap_folder(root: str | os.PathLike[str], service: Any, *, verify: bool = True) -> RewrapReport:
    """Rewrap every envelope under ``root`` sealed with ``service``'s data key.

    ``service`` is a ``TransitKeyService`` (``key_ref``, ``rewrap``,
    ``unwrap_data_key``, ``key_info``). Envelopes of other keys and plain files
    are counted and left alone. A per-file problem (damaged header, a wrapped
    key Vault rejects) is reported and the walk goes on; a Vault outage stops it.
    """
    root = Path(root)
    return _rewrap_each(((path, str(path.relative_to(root))) for path in _walk(root)), str(root), service, verify)


def rewrap_paths(paths: Iterable[str | os.PathLike[str]], service: Any, *, label: str,
                 verify: bool = True) -> RewrapReport:
    """:func:`rewrap_folder` for a list of files (e.g. exports written outside one folder).

    Missing paths are skipped; ``label`` names the set in the report.
    """
    present = [Path(p) for p in paths if Path(p).is_file() and not Path(p).is_symlink()]
    return _rewrap_each(((path, path.name) for path in present), label, service, verify)


def _rewrap_each(items: Iterable[tuple[Path, str]], root: str, service: Any, verify: bool) -> RewrapReport:
    report = RewrapReport(root=root, key_ref=service.key_ref)
    report.target_version = service.key_info().latest_version
    for path, relative in items:
        report.files_seen += 1
        try:
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    report.not_envelopes += 1
                    continue
                handle.seek(0)
                header = read_header(handle)
            if header.key_ref != service.key_ref:
                report.other_key += 1
                continue
            report.envelopes += 1
            size_before = path.stat().st_size - header.header_length
            key_before = service.unwrap_data_key(header.wrapped_key) if verify else None
            changed = rewrap_file(path, service.rewrap)
            if not changed:
                report.already_current += 1
                continue
            if verify:
                with open(path, "rb") as handle:
                    after = read_header(handle)
                key_after = service.unwrap_data_key(after.wrapped_key)
                if not hmac.compare_digest(key_before or b"", key_after) or (
                    path.stat().st_size - after.header_length != size_before
                ):
                    raise RotationError(f"{relative}: rewrap changed the data key or the body; restore from backup")
                report.verified += 1
            report.rewrapped += 1
        except VaultError as exc:
            raise type(exc)(
                f"{exc} - key rotation stopped at {relative} after {report.rewrapped} of {report.envelopes} "
                "envelopes in this folder; nothing was written in plaintext, rerun once Vault is back"
            ) from None
        except RotationError:
            raise
        except (EnvelopeIntegrityError, DataKeyUnwrapError, OSError) as exc:
            report.failed.append((relative, type(exc).__name__))
    return report


@dataclass(frozen=True)
class EnvelopeCensus:
    """How many envelopes under one key a folder (or file list) holds, by key version."""

    envelopes: int
    versions: dict[int, int]
    unreadable: int

    def all_at(self, version: int) -> bool:
        return set(self.versions) <= {version}


def envelope_census(paths: Iterable[str | os.PathLike[str]], key_ref: str) -> EnvelopeCensus:
    """Count the envelopes under ``key_ref`` among ``paths`` (folders are walked); reads headers only.

    Taken before and after a rotation it shows that no envelope was lost.
    """
    versions: dict[int, int] = {}
    envelopes = unreadable = 0
    for item in paths:
        item = Path(item)
        files = _walk(item) if item.is_dir() else ([item] if item.is_file() else [])
        for path in files:
            try:
                with open(path, "rb") as handle:
                    if handle.read(len(MAGIC)) != MAGIC:
                        continue
                    handle.seek(0)
                    header = read_header(handle)
            except (EnvelopeIntegrityError, OSError):
                unreadable += 1
                continue
            if header.key_ref != key_ref:
                continue
            envelopes += 1
            version = wrapped_key_version(header.wrapped_key) or 0
            versions[version] = versions.get(version, 0) + 1
    return EnvelopeCensus(envelopes, dict(sorted(versions.items())), unreadable)


@dataclass
class ColumnRewrapReport:
    """A ciphertext column rewrapped in place: counts only, never a value."""

    table: str
    rows_before: int
    rows_after: int
    ciphertexts_before: int
    ciphertexts_after: int
    rewrapped: int
    verified: int
    target_version: int

    @property
    def complete(self) -> bool:
        return (self.rows_before == self.rows_after and self.ciphertexts_before == self.ciphertexts_after
                and self.verified == self.ciphertexts_after)

    def as_metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"complete": self.complete}


def rewrap_warehouse_column(warehouse: Any, schema: str, table: str, column: str, service: Any) -> ColumnRewrapReport:
    """Rewrap the transit ciphertexts of one warehouse column, in one transaction.

    ``warehouse`` is a :class:`~medllm_pipelines.lib.common.warehouse.Warehouse`
    (DuckDB or PostgreSQL). Each ciphertext is decrypted before and after (in
    memory, compared by SHA-256 only) so "still decrypts to the same value" is
    checked, and the update is keyed by the old ciphertext (unique: transit
    uses a fresh nonce each time), leaving every other column untouched.
    """
    import hashlib

    import pandas as pd

    from medllm_pipelines.lib.common.warehouse import checked_identifier

    schema, table, column = checked_identifier(schema), checked_identifier(table), checked_identifier(column)
    target = service.key_info().latest_version
    qualified = f"{schema}.{table}"
    if not warehouse.table_exists(schema, table):
        return ColumnRewrapReport(qualified, 0, 0, 0, 0, 0, 0, target)
    before = warehouse.query(f"SELECT {column} AS value FROM {qualified}")
    values = [v for v in before["value"].tolist() if isinstance(v, str) and v.startswith("vault:")]
    digests = {v: hashlib.sha256(service.decrypt(v)).hexdigest() for v in values}
    stale = [v for v in values if wrapped_key_version(v) != target]
    new_values, _ = rewrap_ciphertexts(stale, service.rewrap)
    mapping = pd.DataFrame({"old_value": stale, "new_value": new_values}, dtype="string")
    for old, new in zip(stale, new_values, strict=True):
        if hashlib.sha256(service.decrypt(str(new))).hexdigest() != digests[old]:
            raise RotationError(f"{qualified}.{column}: a rewrapped value does not decrypt to the original; "
                                "nothing was updated")
    if len(mapping):
        warehouse.replace_values(schema, table, column, mapping)
    after = warehouse.query(f"SELECT {column} AS value FROM {qualified}")
    after_values = [v for v in after["value"].tolist() if isinstance(v, str) and v.startswith("vault:")]
    expected = sorted(digests.values())
    verified = 0
    if all(wrapped_key_version(v) == target for v in after_values):
        seen = sorted(hashlib.sha256(service.decrypt(v)).hexdigest() for v in after_values)
        verified = len(after_values) if seen == expected else 0
    return ColumnRewrapReport(qualified, len(before), len(after), len(values), len(after_values), len(stale),
                              verified, target)


def rotate_and_rewrap(
    service: Any,
    roots: Sequence[str | os.PathLike[str]],
    *,
    principals: EnvelopeHolder | None = None,
    verify: bool = True,
    rotate: bool = True,
) -> RotationReport:
    """Rotate ``service``'s data key, then rewrap every envelope under ``roots``.

    Old key versions stay usable; call :func:`retire_old_versions` once every
    holder (including warehouse ciphertext columns) is rewrapped. After an
    interrupted run, resume with ``rotate=False`` (rewrap only) rather than
    rotating yet again.
    """
    started = time.monotonic()
    old_version = service.key_info().latest_version
    new_version = service.rotate_key() if rotate else old_version
    folders = [rewrap_folder(root, service, verify=verify) for root in roots if Path(root).exists()]
    principals_rewrapped = principals.rewrap_secrets(service.rewrap) if principals is not None else 0
    return RotationReport(
        key_ref=service.key_ref,
        old_version=old_version,
        new_version=new_version,
        folders=folders,
        principals_rewrapped=principals_rewrapped,
        seconds=time.monotonic() - started,
    )


def retire_old_versions(service: Any, report: RotationReport, *, other_holders_rewrapped: bool) -> int:
    """Set ``min_decryption_version`` to the rotation's new version.

    Refuses unless the report is complete (no failures, every envelope at the
    new version) and the caller confirms that ciphertexts held outside
    envelope files (warehouse columns) were rewrapped too: retiring a version
    makes whatever still uses it unreadable, for good.
    """
    if not report.complete:
        raise RotationError(
            f"refusing to retire key versions below {report.new_version}: {len(report.failed)} envelope(s) failed "
            "or were not rewrapped; fix them and rerun the rewrap first"
        )
    if not other_holders_rewrapped:
        raise RotationError("refusing to retire key versions: confirm warehouse ciphertexts were rewrapped first")
    if report.new_version != service.key_info().latest_version:
        raise RotationError("the key was rotated again since this report; rewrap again before retiring")
    return service.set_min_decryption_version(report.new_version).min_decryption_version


def _walk(root: Path) -> Iterable[Path]:
    """Regular files under ``root``, sorted, skipping temp files of atomic writes and symlinks."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            yield path
