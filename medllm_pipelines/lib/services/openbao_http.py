"""The unauthenticated part of OpenBao's HTTP API a supervisor needs: health, init, unseal.

Every call goes to a loopback address without proxies, and no error message
carries a token, an unseal key or bao's stdout unredacted: they end up in
terminals and CI logs.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.security.errors import OpenBaoServerError
from medllm_pipelines.lib.services.processes import PortTaken

__all__ = [
    "answering",
    "await_health",
    "healthy",
    "probe_health",
    "redact",
    "startup_output",
    "sys_request",
    "unseal",
]

Health = dict[str, Any]


def probe_health(addr: str) -> Health | None:
    """GET /v1/sys/health without a token or proxies; None if unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"{addr}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200"
    try:
        with opener.open(url, timeout=1.0) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def healthy(health: Health | None) -> bool:
    """Initialised and unsealed: ready for transit calls."""
    return bool(health) and bool(health.get("initialized")) and not health.get("sealed", True)


def answering(health: Health | None) -> bool:
    """Listening, whatever its seal state (a persistent server is initialised and unsealed over the API)."""
    return health is not None


def await_health(
    addr: str,
    process: subprocess.Popen[bytes],
    output: Callable[[], str],
    timeout_s: float,
    ready: Callable[[Health | None], bool],
) -> Health:
    """Poll sys/health until ``ready``; a dead process or a timeout raises with ``output()`` (redacted).

    A start that died because its port was taken raises :class:`PortTaken`, so
    the caller can try another port.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = output()
            message = f"OpenBao exited with code {process.returncode} during startup. Last output:\n{tail}"
            if "address already in use" in tail:
                raise PortTaken(message)
            raise OpenBaoServerError(message)
        health = probe_health(addr)
        if ready(health):
            assert health is not None
            return health
        if time.monotonic() > deadline:
            raise OpenBaoServerError(f"OpenBao at {addr} was not ready after {timeout_s:.0f} s. Last output:\n{output()}")
        time.sleep(0.02)


def unseal(addr: str, unseal_key: str, secrets_known: tuple[str, ...]) -> None:
    answer = sys_request(addr, "unseal", {"key": unseal_key}, secrets_known)
    if answer.get("sealed", True):
        raise OpenBaoServerError(f"OpenBao at {addr} is still sealed after the stored unseal key was submitted")


def sys_request(addr: str, path: str, body: dict[str, Any], secrets_known: tuple[str, ...]) -> dict[str, Any]:
    """POST an unauthenticated ``sys/`` call; errors never echo the body or a secret."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{addr}/v1/sys/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with opener.open(request, timeout=10.0) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            reason = "; ".join(str(e) for e in json.loads(exc.read()).get("errors") or []) or exc.reason
        except (ValueError, AttributeError, OSError):
            reason = str(exc.reason)
        raise OpenBaoServerError(
            f"OpenBao at {addr} refused sys/{path} (HTTP {exc.code}): {redact(str(reason), *secrets_known)}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise OpenBaoServerError(f"cannot reach OpenBao at {addr} for sys/{path}: {type(exc).__name__}") from None
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        raise OpenBaoServerError(f"OpenBao at {addr} answered sys/{path} with invalid JSON") from None
    return answer if isinstance(answer, dict) else {}


def startup_output(log_file: Path, banner_file: Path | None, secrets_known: tuple[str, ...]) -> str:
    """The log's last lines plus the error lines of bao's stdout (if kept apart), secrets removed."""
    return _log_tail(log_file, *secrets_known) + (
        _banner_errors(banner_file, secrets_known) if banner_file is not None else ""
    )


def redact(text: str, *secrets_known: str) -> str:
    for secret in secrets_known:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _log_tail(log_file: Path, *secrets_known: str, lines: int = 15) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(redact(text, *secrets_known).splitlines()[-lines:])


def _banner_errors(banner_file: Path, secrets_known: tuple[str, ...]) -> str:
    """Error lines of bao's stdout, with secrets removed (CLI errors go there, next to the token)."""
    try:
        text = banner_file.read_text(errors="replace")
    except OSError:
        return ""
    kept = [
        redact(line, *secrets_known)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("Root Token:", "Unseal Key:"))
        and ("error" in line.lower() or line.startswith(("\t", " ")) and "*" in line)
    ]
    return ("\n" + "\n".join(kept[-10:])) if kept else ""
