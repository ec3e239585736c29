"""The least-privilege runtime policy (infra/vault/medllm-pipelines.hcl) is enough for the pipeline, and no more.

A token holding only that policy must do everything a run does (data keys,
ledger ciphertexts, pseudonyms, the audit log's keyed checkpoints, export
data keys) and be refused what belongs to an operator (rotation, key
creation, reading another key's HMAC).
"""

from __future__ import annotations

from pathlib import Path

import hvac
import pytest

from medllm_pipelines.lib.security.audit import AuditLog, TransitChainKey
from medllm_pipelines.lib.security.errors import VaultPermissionError
from medllm_pipelines.lib.security.vault_client import (
    DEFAULT_AUDIT_KEY_NAME,
    DEFAULT_EXPORT_KEY_NAME,
    TransitKeyService,
)
from medllm_pipelines.lib.services.openbao import BaoServer

POLICY_FILE = Path(__file__).resolve().parents[3] / "infra" / "vault" / "medllm-pipelines.hcl"


@pytest.fixture(scope="module")
def runtime_service(openbao_server: BaoServer) -> TransitKeyService:
    root = hvac.Client(url=openbao_server.addr, token=openbao_server.token)
    root.sys.create_or_update_policy("medllm-pipelines", POLICY_FILE.read_text())
    token = root.auth.token.create(policies=["medllm-pipelines"], no_default_policy=True, ttl="15m")["auth"]["client_token"]
    with TransitKeyService(openbao_server.addr, openbao_server.token) as admin:
        admin.ensure_transit(None)  # the operator creates every key the runtime uses
    return TransitKeyService(openbao_server.addr, token)


def test_the_runtime_token_can_do_what_a_run_does(runtime_service: TransitKeyService, tmp_path: Path) -> None:
    data_key, wrapped = runtime_service.generate_data_key()
    assert runtime_service.unwrap_data_key(wrapped) == data_key
    assert runtime_service.decrypt(runtime_service.encrypt(b"ledger path")) == b"ledger path"
    assert len(runtime_service.hmac_many(["id-1", "id-2"])) == 2
    log = AuditLog(tmp_path / "audit.jsonl", chain_key=TransitChainKey(runtime_service, key_name=DEFAULT_AUDIT_KEY_NAME),
                   checkpoint_every=2)
    for n in range(3):
        log.append(actor="pipeline", role="service", action="raw_zone.read", resource=f"table_{n}", outcome="allowed")
    assert log.verify().ok


def test_the_runtime_token_cannot_do_an_operators_work(runtime_service: TransitKeyService) -> None:
    with pytest.raises(VaultPermissionError):
        runtime_service.rotate_key()
    with pytest.raises(VaultPermissionError):
        runtime_service.ensure_transit({"medllm-new": "aes256-gcm96"})
    with pytest.raises(VaultPermissionError):
        runtime_service.hmac_many(["x"], key_name=DEFAULT_EXPORT_KEY_NAME)  # an export key is not an HMAC key for us
