"""VaultResource: embedded token file, EnvVar config, use inside a Dagster run."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import dagster as dg
import pytest

from medllm_pipelines.lib.security.envelope import DataKeyProvider, decrypt_bytes, encrypt_bytes, read_header
from medllm_pipelines.lib.security.errors import OpenBaoServerError, VaultUnavailableError
from medllm_pipelines.lib.security.vault_client import TransitKeyService
from medllm_pipelines.lib.services.openbao import BaoServer
from medllm_pipelines.resources.vault import VaultResource

SECRET_TOKEN = "medllm-test-token-must-never-leak-7f3a9c"


def test_resource_from_token_file_is_a_data_key_provider(
    vault_resource: VaultResource, transit_service: TransitKeyService
) -> None:
    data = b"Patient: Zhang San; MRN 00412345"
    blob = encrypt_bytes(data, vault_resource, b"note-1")

    assert isinstance(vault_resource, DataKeyProvider)
    assert read_header(io.BytesIO(blob)).key_ref == "transit/medllm-raw-zone"
    assert decrypt_bytes(blob, transit_service, b"note-1") == data  # same key as the service
    assert vault_resource.decrypt(vault_resource.encrypt(b"s3cret", b"ctx"), b"ctx") == b"s3cret"
    assert vault_resource.hmac_many(["MRN-1"]) == transit_service.hmac_many(["MRN-1"])
    assert vault_resource.health()["sealed"] is False
    assert vault_resource.key_service() is vault_resource.key_service()


def test_token_file_is_read_lazily(tmp_path: Path) -> None:
    resource = VaultResource(token_file=str(tmp_path / "openbao.json"))  # no server, no file: fine
    assert resource.key_ref == "transit/medllm-raw-zone"
    with pytest.raises(OpenBaoServerError, match="medllm services up"):
        resource.generate_data_key()


def test_no_secret_in_repr_or_errors() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resource = VaultResource(addr=f"http://127.0.0.1:{port}", token=SECRET_TOKEN, timeout=2)

    assert SECRET_TOKEN not in repr(resource) and SECRET_TOKEN not in str(resource)
    with pytest.raises(VaultUnavailableError) as caught:
        resource.generate_data_key()
    assert SECRET_TOKEN not in str(caught.value) and SECRET_TOKEN not in repr(caught.value)


def test_resource_configured_from_env_var_works_in_a_dagster_run(
    openbao_server: BaoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VAULT_ADDR", openbao_server.addr)
    monkeypatch.setenv("TEST_VAULT_TOKEN", openbao_server.token)

    @dg.asset
    def sealed_note(vault: VaultResource) -> dg.MaterializeResult:
        blob = encrypt_bytes(b"Patient: Zhang San", vault, b"note-1")
        assert decrypt_bytes(blob, vault, b"note-1") == b"Patient: Zhang San"
        return dg.MaterializeResult(metadata={"key_ref": vault.key_ref, "bytes": len(blob)})

    resource = VaultResource(addr=dg.EnvVar("TEST_VAULT_ADDR"), token=dg.EnvVar("TEST_VAULT_TOKEN"))
    result = dg.materialize([sealed_note], resources={"vault": resource})

    assert result.success
    metadata = result.asset_materializations_for_node("sealed_note")[0].metadata
    assert metadata["key_ref"].value == "transit/medllm-raw-zone"
    events = "".join(str(event) for event in result.all_events)
    assert openbao_server.token not in events


def test_env_var_config_also_works_outside_a_run(openbao_server: BaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI builds resources without a run; EnvVar must not be used as a literal."""
    monkeypatch.setenv("TEST_VAULT_ADDR", openbao_server.addr)
    monkeypatch.setenv("TEST_VAULT_TOKEN", openbao_server.token)
    resource = VaultResource(addr=dg.EnvVar("TEST_VAULT_ADDR"), token=dg.EnvVar("TEST_VAULT_TOKEN"))

    assert resource.health()["sealed"] is False
    assert openbao_server.token not in repr(resource)


def test_key_service_for_settings_opens_what_the_resource_opens(
    openbao_server: BaoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service and the CLI open Vault without Dagster; the keys are those the pipeline's resource uses."""
    from types import SimpleNamespace

    from medllm_pipelines.lib.security.vault_connection import key_service_for

    local = SimpleNamespace(uses_local_openbao=True, openbao_state_file=openbao_server.state_file, vault_addr=None,
                            vault_token_in_env=False, vault_cacert=None)
    resource = VaultResource(token_file=str(openbao_server.state_file))
    service = key_service_for(local)
    assert service.addr == openbao_server.addr
    assert service.hmac_many(["MRN-1"]) == resource.hmac_many(["MRN-1"])
    assert key_service_for(local, data_key_name="medllm-exports").data_key_name == "medllm-exports"

    external = SimpleNamespace(uses_local_openbao=False, openbao_state_file=None, vault_addr=openbao_server.addr,
                               vault_token_in_env=True, vault_cacert=None)
    monkeypatch.setenv("VAULT_TOKEN", openbao_server.token)
    assert key_service_for(external).hmac_many(["MRN-1"]) == resource.hmac_many(["MRN-1"])
    monkeypatch.delenv("VAULT_TOKEN")
    with pytest.raises(Exception, match="no Vault token"):
        key_service_for(SimpleNamespace(**{**vars(external), "vault_token_in_env": False}))


def test_a_service_worker_does_not_import_dagster() -> None:
    """What a `medllm serve` worker imports to open Vault and build its scenarios (~2 s less per worker)."""
    import subprocess
    import sys

    code = ("import sys; import medllm_pipelines.cli_serve as c; import medllm_pipelines.serving.app; "
            "import medllm_pipelines.serving.context; import medllm_pipelines.serving.scenarios; "
            "import medllm_pipelines.lib.security.vault_connection; "
            "assert 'dagster' not in sys.modules, sorted(m for m in sys.modules if m.startswith('dagster'))[:5]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
