"""How each kind of local OpenBao is launched: the only place the dev and persistent servers differ.

:mod:`~medllm_pipelines.lib.services.openbao` starts, health-waits, reuses and
stops both kinds through one path; a :class:`LaunchPlan` carries what differs
(command line, environment, where stdout goes, who picks the root token).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.services.openbao_state import (
    BANNER_FILE_NAME,
    MODE_DEV,
    MODE_PERSISTENT,
    config_file,
    data_dir,
    write_state,
)
from medllm_pipelines.lib.services.processes import LISTEN_HOST, spawn

__all__ = ["LaunchPlan", "plan_launch", "server_config", "spawn_server"]


@dataclass(frozen=True)
class LaunchPlan:
    """How one kind of server is launched; everything else about a start is shared.

    ``token`` is the dev server's root token, chosen here and handed over in its
    environment; a persistent server's token comes from ``sys/init`` (or its
    record), so it is None there and the server must be initialised and
    unsealed over the API after it answers.
    """

    command: list[str]
    env: dict[str, str]
    banner_file: Path | None  # bao's stdout kept apart (it holds secrets); None: stdout goes to the log
    token: str | None
    record_fields: dict[str, Any]

    @property
    def initialises_itself(self) -> bool:
        return self.token is not None


def plan_launch(state_dir: Path, mode: str, binary: str, port: int) -> LaunchPlan:
    """The plan for ``mode``; a persistent server's private data dir and config file are written here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    if mode == MODE_DEV:
        # "s." and similar prefixes are reserved by OpenBao and make dev init fail.
        token = f"medllm-dev-{secrets.token_urlsafe(32)}"
        return LaunchPlan(
            command=[binary, "server", "-dev", "-dev-no-store-token", f"-dev-listen-address={LISTEN_HOST}:{port}"],
            env={**env, "BAO_DEV_ROOT_TOKEN_ID": token},
            banner_file=state_dir / BANNER_FILE_NAME,
            token=token,
            record_fields={},
        )
    storage = data_dir(state_dir)
    storage.mkdir(mode=0o700, exist_ok=True)
    os.chmod(storage, 0o700)
    write_state(config_file(state_dir), server_config(storage, port))
    return LaunchPlan(
        command=[binary, "server", f"-config={config_file(state_dir)}"],
        env=env,
        banner_file=None,
        token=None,
        record_fields={"mode": MODE_PERSISTENT, "port": port},
    )


def server_config(storage: Path, port: int) -> dict[str, Any]:
    """bao's configuration for the persistent server (bao reads JSON configs too)."""
    return {
        # PebbleDB: OpenBao 2.7 removed the `file` backend ("unknown storage type
        # file") and names PebbleDB its single-node replacement. Raft would also
        # work but spends ~5 s on leader election at every first start.
        "storage": {"pebbledb": {"path": str(storage)}},
        # tls_disable: the listener is bound to 127.0.0.1 only, so the token never
        # leaves the machine; TLS would need a CA every client trusts, for nothing.
        # Never copy this to a listener on another interface.
        "listener": [{"tcp": {"address": f"{LISTEN_HOST}:{port}", "tls_disable": True}}],
        "api_addr": f"http://{LISTEN_HOST}:{port}",
        "ui": False,
        # No `disable_mlock`: OpenBao 2.7.2 logs it as an unknown or unsupported field.
    }


def spawn_server(plan: LaunchPlan, log_file: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    """Start bao with its output in 0600 files created before it runs (never through a symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    log_fd = os.open(log_file, flags, 0o600)
    banner_fd = os.open(plan.banner_file, flags, 0o600) if plan.banner_file is not None else None
    try:
        os.fchmod(log_fd, 0o600)
        return spawn(
            plan.command,
            stdin=subprocess.DEVNULL,
            stdout=log_fd if banner_fd is None else banner_fd,
            stderr=subprocess.STDOUT if banner_fd is None else log_fd,
            env=plan.env,
            cwd=state_dir,
            umask=0o077,  # storage files private even where the data dir's mode is changed later
        )
    finally:
        os.close(log_fd)
        if banner_fd is not None:
            os.close(banner_fd)
