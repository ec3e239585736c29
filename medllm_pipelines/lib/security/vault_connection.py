"""Opening the transit key service: one function for the Dagster resource, the CLI and the REST service.

``VaultResource`` (a Dagster ``ConfigurableResource``) calls :func:`open_key_service` with its fields;
:func:`key_service_for` takes the project settings directly, so that ``medllm serve`` workers and the
security commands reach Vault without importing Dagster and dagster-dbt (~2 s per process).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.security.errors import VaultPermissionError
from medllm_pipelines.lib.security.vault_client import (
    DEFAULT_DATA_KEY_NAME,
    DEFAULT_PSEUDONYM_KEY_NAME,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TRANSIT_MOUNT,
    TransitKeyService,
)
from medllm_pipelines.lib.services.openbao_state import read_connection_file

__all__ = ["key_service_for", "open_key_service"]


def open_key_service(addr: str | None, token: str | None, token_file: str | None, *,
                     transit_mount: str = DEFAULT_TRANSIT_MOUNT, data_key_name: str = DEFAULT_DATA_KEY_NAME,
                     pseudonym_key_name: str = DEFAULT_PSEUDONYM_KEY_NAME, tls_verify: bool = True,
                     ca_cert: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                     allow_insecure_http: bool = False) -> TransitKeyService:
    """A client on ``addr`` with ``token``; without a token, both read from the local server's ``token_file``."""
    if not token:
        if not token_file:
            raise VaultPermissionError("no Vault token (VAULT_TOKEN) and no token file of the local OpenBao server")
        file_addr, token = read_connection_file(Path(token_file))
        addr = addr or file_addr
    if not addr:
        raise ValueError("the key service needs a Vault address (or a token file that records it)")
    verify: bool | str = ca_cert if (tls_verify and ca_cert) else tls_verify
    return TransitKeyService(addr, token, transit_mount=transit_mount, data_key_name=data_key_name,
                             pseudonym_key_name=pseudonym_key_name, verify=verify, timeout=timeout,
                             allow_insecure_http=allow_insecure_http)


def key_service_for(settings: Any, **options: Any) -> TransitKeyService:
    """What ``defs.resources.vault_resource(settings, **options).key_service()`` opens: the project's OpenBao
    through its state file, or ``VAULT_ADDR`` with ``VAULT_TOKEN`` from the environment and ``VAULT_CACERT``."""
    if settings.uses_local_openbao:
        return open_key_service(None, None, str(settings.openbao_state_file), **options)
    token = os.environ.get("VAULT_TOKEN") if settings.vault_token_in_env else None
    return open_key_service(settings.vault_addr, token, None, ca_cert=settings.vault_cacert, **options)
