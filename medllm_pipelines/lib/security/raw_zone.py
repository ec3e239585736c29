"""The encrypted raw zone: the only place identifiable data may rest.

Objects (landed files, addressed by content hash) and tables (parsed,
still-identifiable records as Parquet) are envelope-encrypted with AES-256-GCM
data keys wrapped by Vault transit. The AAD binds each blob to its name, so a
file swapped for another fails to decrypt.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from medllm_pipelines.lib.security.envelope import DataKeyProvider, decrypt_bytes, encrypt_bytes

_NAME = re.compile(r"^[a-z0-9_]+$")
_PARTITION = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class RawZone:
    """Encrypted object + table store under one folder."""

    def __init__(self, root: Path, keys: DataKeyProvider) -> None:
        self.root = Path(root)
        self.keys = keys

    # --- objects (landed files) -------------------------------------------
    def object_path(self, sha256: str) -> Path:
        if not _SHA.fullmatch(sha256):
            raise ValueError("object name must be a sha256 hex digest")
        return self.root / "objects" / sha256[:2] / f"{sha256}.enc"

    def has_object(self, sha256: str) -> bool:
        return self.object_path(sha256).exists()

    def put_object(self, sha256: str, content: bytes) -> Path:
        """Store ``content`` encrypted; idempotent for an existing hash."""
        path = self.object_path(sha256)
        if not path.exists():
            _write_private(path, encrypt_bytes(content, self.keys, aad=f"object:{sha256}".encode()))
        return path

    def get_object(self, sha256: str) -> bytes:
        return decrypt_bytes(self.object_path(sha256).read_bytes(), self.keys, aad=f"object:{sha256}".encode())

    # --- tables -----------------------------------------------------------
    def table_path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid raw-zone table name {name!r}")
        return self.root / "tables" / f"{name}.parquet.enc"

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        path = self.table_path(name)
        _write_private(path, encrypt_bytes(buffer.getvalue(), self.keys, aad=f"table:{name}".encode()))
        return path

    def read_table(self, name: str) -> pd.DataFrame:
        path = self.table_path(name)
        if not path.exists():
            raise FileNotFoundError(f"raw-zone table {name!r} has not been materialised")
        plaintext = decrypt_bytes(path.read_bytes(), self.keys, aad=f"table:{name}".encode())
        return pd.read_parquet(io.BytesIO(plaintext))

    def has_table(self, name: str) -> bool:
        return self.table_path(name).exists()

    # --- partitioned tables (one file per source institution) ---------------
    def partition_path(self, name: str, partition: str) -> Path:
        if not _NAME.fullmatch(name) or not _PARTITION.fullmatch(partition):
            raise ValueError(f"invalid raw-zone partition {name!r}/{partition!r}")
        return self.root / "tables" / name / f"{partition}.parquet.enc"

    def write_partition(self, name: str, partition: str, frame: pd.DataFrame) -> Path:
        """Replace one partition: re-materialising a partition never duplicates its rows."""
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        path = self.partition_path(name, partition)
        _write_private(path, encrypt_bytes(buffer.getvalue(), self.keys, aad=f"table:{name}/{partition}".encode()))
        return path

    def partitions(self, name: str) -> list[str]:
        folder = self.root / "tables" / name
        if not _NAME.fullmatch(name) or not folder.is_dir():
            return []
        return sorted(p.name.removesuffix(".parquet.enc") for p in folder.glob("*.parquet.enc"))

    def read_partition(self, name: str, partition: str) -> pd.DataFrame:
        path = self.partition_path(name, partition)
        plaintext = decrypt_bytes(path.read_bytes(), self.keys, aad=f"table:{name}/{partition}".encode())
        return pd.read_parquet(io.BytesIO(plaintext))

    def read_partitions(self, name: str) -> pd.DataFrame:
        """All partitions of a table, concatenated (the whole table as downstream stages see it)."""
        parts = [self.read_partition(name, partition) for partition in self.partitions(name)]
        parts = [frame for frame in parts if len(frame.columns)]
        if not parts:
            raise FileNotFoundError(f"raw-zone table {name!r} has no materialised partition")
        non_empty = [frame for frame in parts if len(frame)]
        return pd.concat(non_empty or parts[:1], ignore_index=True)


def _write_private(path: Path, data: bytes) -> None:
    """Atomic 0600 write: readers never see half a blob."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
