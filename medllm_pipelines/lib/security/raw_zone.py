"""The encrypted raw zone: the only place identifiable data may rest.

Objects (landed files, addressed by content hash) and tables (parsed,
still-identifiable records as Parquet) are envelope-encrypted with AES-256-GCM
data keys wrapped by Vault transit. The AAD binds each blob to its name, so a
file swapped for another fails to decrypt.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from medllm_pipelines.lib.common.files import write_private_atomic
from medllm_pipelines.lib.security.envelope import DataKeyProvider, decrypt_bytes, decrypt_stream, encrypt_bytes

_NAME = re.compile(r"^[a-z0-9_]+$")
_PARTITION = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class RawZone:
    """Encrypted object + table store under one folder.

    ``on_read`` is called with the table name (``"objects"`` for landed files)
    before anything identifiable is decrypted: the audit hook. If it raises
    (the audit log cannot be written), the read does not happen.
    """

    def __init__(self, root: Path, keys: DataKeyProvider, *, on_read: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.keys = keys
        self.on_read = on_read

    def _reading(self, name: str) -> None:
        if self.on_read is not None:
            self.on_read(name)

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
        self._reading("objects")
        return decrypt_bytes(self.object_path(sha256).read_bytes(), self.keys, aad=f"object:{sha256}".encode())

    @contextmanager
    def stream_object(self, sha256: str) -> Iterator[Iterator[bytes]]:
        """The object's plaintext as authenticated chunks: memory flat in the object's size."""
        self._reading("objects")
        with self.object_path(sha256).open("rb") as handle:
            yield decrypt_stream(handle, self.keys, aad=f"object:{sha256}".encode())

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
        self._reading(name)
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
        path = self.partition_path(name, partition)
        self._write_part(name, partition, path, frame)
        for stale in self._part_paths(name, partition):
            stale.unlink()
        return path

    def write_partition_parts(self, name: str, partition: str, frames: Iterable[pd.DataFrame]) -> int:
        """Replace one partition by a sequence of part files; returns the number of parts."""
        writer = self.partition_writer(name, partition)
        for frame in frames:
            writer.write(frame)
        return writer.commit()

    def partition_writer(self, name: str, partition: str) -> PartitionWriter:
        """Write a large partition in bounded parts; nothing replaces the old partition until
        ``commit()``, so a run killed midway leaves the previous partition intact."""
        return PartitionWriter(self, name, partition)

    def _part_paths(self, name: str, partition: str) -> list[Path]:
        folder = self.partition_path(name, partition).parent
        return sorted(folder.glob(f"{partition}.part-*.parquet.enc"))

    def _write_part(self, name: str, partition: str, path: Path, frame: pd.DataFrame, part_index: int | None = None) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        aad = f"table:{name}/{partition}" + ("" if part_index is None else f"/part-{part_index:05d}")
        _write_private(path, encrypt_bytes(buffer.getvalue(), self.keys, aad=aad.encode()))

    def partitions(self, name: str) -> list[str]:
        folder = self.root / "tables" / name
        if not _NAME.fullmatch(name) or not folder.is_dir():
            return []
        names = {p.name.removesuffix(".parquet.enc").split(".part-")[0] for p in folder.glob("[!.]*.parquet.enc")}
        return sorted(names)

    def read_partition(self, name: str, partition: str) -> pd.DataFrame:
        path = self.partition_path(name, partition)
        self._reading(name)
        if path.exists():
            plaintext = decrypt_bytes(path.read_bytes(), self.keys, aad=f"table:{name}/{partition}".encode())
            return pd.read_parquet(io.BytesIO(plaintext))
        parts = []
        for part in self._part_paths(name, partition):
            index = int(part.name.split(".part-")[1].split(".")[0])
            aad = f"table:{name}/{partition}/part-{index:05d}".encode()
            parts.append(pd.read_parquet(io.BytesIO(decrypt_bytes(part.read_bytes(), self.keys, aad=aad))))
        if not parts:
            raise FileNotFoundError(f"raw-zone partition {name!r}/{partition!r} has not been materialised")
        non_empty = [frame for frame in parts if len(frame)]
        return pd.concat(non_empty or parts[:1], ignore_index=True)

    def read_partitions(self, name: str) -> pd.DataFrame:
        """All partitions of a table, concatenated (the whole table as downstream stages see it)."""
        parts = [self.read_partition(name, partition) for partition in self.partitions(name)]
        parts = [frame for frame in parts if len(frame.columns)]
        if not parts:
            raise FileNotFoundError(f"raw-zone table {name!r} has no materialised partition")
        non_empty = [frame for frame in parts if len(frame)]
        return pd.concat(non_empty or parts[:1], ignore_index=True)


class PartitionWriter:
    """Staged part files of one raw-zone partition, swapped in by ``commit``."""

    def __init__(self, zone: RawZone, name: str, partition: str) -> None:
        self.zone, self.name, self.partition = zone, name, partition
        self.final = zone.partition_path(name, partition)
        for leftover in self.final.parent.glob(f".staged.{partition}.part-*"):
            leftover.unlink()  # a previous run's parts that were never committed
        self.staged: list[Path] = []

    def write(self, frame: pd.DataFrame) -> None:
        index = len(self.staged)
        part = self.final.with_name(f".staged.{self.partition}.part-{index:05d}.parquet.enc")
        self.zone._write_part(self.name, self.partition, part, frame, part_index=index)
        self.staged.append(part)

    def commit(self) -> int:
        for stale in [*self.zone._part_paths(self.name, self.partition), self.final]:
            stale.unlink(missing_ok=True)
        for part in self.staged:
            os.replace(part, part.with_name(part.name.removeprefix(".staged.")))
        return len(self.staged)


def _write_private(path: Path, data: bytes) -> None:
    """Atomic 0600 write in a 0700 folder: readers never see half a blob."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_atomic(path, data)
