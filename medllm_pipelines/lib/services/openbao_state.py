"""What a local OpenBao leaves in its state dir, and who may read it.

``<state_dir>/openbao.json`` (0600, directory 0700) records the server: its
address, pid, binary and root token; a persistent server's record adds
``"mode": "persistent"``, its port and the unseal key (dev records have no
mode). :func:`read_connection` refuses a record that others can read, because
whoever reads it holds the key service.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.files import write_private_atomic
from medllm_pipelines.lib.security.errors import OpenBaoServerError
from medllm_pipelines.lib.services.processes import port_of

__all__ = [
    "BANNER_FILE_NAME",
    "CONFIG_FILE_NAME",
    "DATA_DIR_NAME",
    "LOCK_FILE_NAME",
    "LOG_FILE_NAME",
    "MODE_DEV",
    "MODE_PERSISTENT",
    "STATE_FILE_NAME",
    "BaoServer",
    "config_file",
    "data_dir",
    "load_state",
    "private_dir",
    "read_connection",
    "read_connection_file",
    "recorded_port",
    "state_file",
    "write_state",
]

STATE_FILE_NAME = "openbao.json"
LOG_FILE_NAME = "openbao.log"
LOCK_FILE_NAME = "openbao.lock"
BANNER_FILE_NAME = ".openbao.stdout"
CONFIG_FILE_NAME = "openbao-config.json"
DATA_DIR_NAME = "data"
MODE_DEV = "dev"
MODE_PERSISTENT = "persistent"


@dataclass(frozen=True)
class BaoServer:
    """A running local server; ``token`` is left out of ``repr``.

    ``mode`` is ``"dev"`` (in-memory) or ``"persistent"`` (storage in ``data_dir``).
    The unseal key of a persistent server is deliberately not carried here: only
    the start code needs it, and it reads it from the state file.
    """

    addr: str
    pid: int
    started_at: str
    binary: str
    state_file: Path
    log_file: Path
    reused: bool
    token: str = field(repr=False)
    mode: str = MODE_DEV
    data_dir: Path | None = None

    @classmethod
    def from_record(cls, state_dir: Path, record: dict[str, Any], *, reused: bool) -> BaoServer:
        """The server a (complete) record describes."""
        persistent = record.get("mode") == MODE_PERSISTENT
        return cls(
            addr=str(record["addr"]),
            pid=int(record["pid"]),
            started_at=str(record.get("started_at") or ""),
            binary=str(record.get("binary", "")),
            state_file=state_file(state_dir),
            log_file=state_dir / LOG_FILE_NAME,
            reused=reused,
            token=str(record["token"]),
            mode=MODE_PERSISTENT if persistent else MODE_DEV,
            data_dir=data_dir(state_dir) if persistent else None,
        )


def state_file(state_dir: Path) -> Path:
    return state_dir / STATE_FILE_NAME


def data_dir(state_dir: Path) -> Path:
    return state_dir / DATA_DIR_NAME


def config_file(state_dir: Path) -> Path:
    return state_dir / CONFIG_FILE_NAME


def load_state(state_dir: Path) -> dict[str, Any] | None:
    """The record; None if there is none, ``{}`` if it is unreadable (callers decide what that means)."""
    try:
        state = json.loads(state_file(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: Path, payload: dict[str, Any]) -> None:
    """A record or a config: 0600 from its first byte, replaced atomically."""
    write_private_atomic(path, json.dumps(payload, indent=2))


def recorded_port(state: dict[str, Any] | None) -> int | None:
    if not state:
        return None
    try:
        return int(state.get("port") or port_of(state["addr"]))
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def private_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` 0700 (tightening it if it is ours and looser)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = state_dir.stat()
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        os.chmod(state_dir, 0o700)
    return state_dir


def read_connection(state_dir: Path) -> tuple[str, str]:
    """``(addr, token)`` of the server recorded in ``state_dir``."""
    return read_connection_file(state_file(Path(state_dir)))


def read_connection_file(path: Path) -> tuple[str, str]:
    """``(addr, token)`` from an ``openbao.json``, refusing one others can read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise OpenBaoServerError(
            f"no OpenBao state file at {path}; start the dev server with `medllm services up`"
        ) from None
    except OSError as exc:
        raise OpenBaoServerError(f"cannot open OpenBao state file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise OpenBaoServerError(
                f"{path} is readable by other users (mode {mode & 0o777:o}); run `chmod 600 {path}`"
            )
        try:
            state = json.loads(handle.read())
            return str(state["addr"]), str(state["token"])
        except (ValueError, KeyError, TypeError):
            raise OpenBaoServerError(f"{path} is not a valid OpenBao state file") from None
