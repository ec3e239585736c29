"""OpenBao behind TLS on loopback, as production's Vault runs: verified with our CA, refused without it.

A throwaway CA and server certificate (SAN 127.0.0.1) are generated with
`cryptography`; bao runs from a config file with a TLS listener (the shape of
a production listener), is initialised and unsealed over HTTPS, and the
project's clients (TransitKeyService, VaultResource, the raw zone) talk to it
with `ca_cert`. Without the CA every call fails closed with a TLS error and
nothing is written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.security.errors import VaultError, VaultUnavailableError
from medllm_pipelines_tests.tls import make_certificates


@dataclass
class TlsBao:
    addr: str
    token: str
    ca_file: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory, bao_binary: str) -> Iterator[TlsBao]:
    import hvac

    folder = tmp_path_factory.mktemp("bao-tls")
    ca_file, cert_file, key_file = make_certificates(folder)
    port = _free_port()
    config = {
        "storage": {"inmem": {}},
        "listener": [{"tcp": {"address": f"127.0.0.1:{port}", "tls_cert_file": str(cert_file),
                              "tls_key_file": str(key_file), "tls_min_version": "tls12"}}],
        "api_addr": f"https://127.0.0.1:{port}",
        "ui": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    log = (folder / "bao.log").open("wb")
    process = subprocess.Popen([bao_binary, "server", f"-config={folder / 'config.json'}"], stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    addr = f"https://127.0.0.1:{port}"
    try:
        client = hvac.Client(url=addr, verify=str(ca_file), timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.sys.is_initialized()
                break
            except Exception:  # noqa: BLE001 - not listening yet, any failure means retry
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"bao with TLS did not start: {(folder / 'bao.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        answer = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(answer["keys_base64"][0])
        yield TlsBao(addr=addr, token=answer["root_token"], ca_file=ca_file)
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def test_clients_verify_the_server_with_the_configured_ca(tls_bao: TlsBao) -> None:
    from medllm_pipelines.lib.security.vault_client import TransitKeyService
    from medllm_pipelines.resources.vault import VaultResource

    with TransitKeyService(tls_bao.addr, tls_bao.token, verify=str(tls_bao.ca_file)) as service:
        service.ensure_transit(None)
    vault = VaultResource(addr=tls_bao.addr, token=tls_bao.token, ca_cert=str(tls_bao.ca_file))
    token = vault.encrypt(b"over TLS")
    assert token.startswith("vault:v1:") and vault.decrypt(token) == b"over TLS"
    data_key, wrapped = vault.generate_data_key()
    assert len(data_key) == 32 and vault.unwrap_data_key(wrapped) == data_key
    assert len(vault.hmac_many(["a", "b"])) == 2


def test_without_the_ca_every_call_fails_closed_and_nothing_is_written(tls_bao: TlsBao, tmp_path: Path) -> None:
    from medllm_pipelines.lib.security.raw_zone import RawZone
    from medllm_pipelines.resources.vault import VaultResource

    untrusting = VaultResource(addr=tls_bao.addr, token=tls_bao.token)  # the system CA store does not know our CA
    with pytest.raises(VaultUnavailableError, match="TLS verification failed"):
        untrusting.encrypt(b"x")
    zone = RawZone(tmp_path / "raw", untrusting)
    with pytest.raises(VaultUnavailableError):
        zone.write_table("patients", pd.DataFrame({"name": ["must never reach disk"]}))
    written = [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] if (tmp_path / "raw").exists() else []
    assert all(b"must never reach disk" not in p.read_bytes() for p in written)
    assert not any(p.suffix == ".parquet" for p in written)


def test_plain_http_to_the_tls_listener_is_refused(tls_bao: TlsBao) -> None:
    from medllm_pipelines.resources.vault import VaultResource

    plain = VaultResource(addr=tls_bao.addr.replace("https://", "http://"), token=tls_bao.token)
    with pytest.raises(VaultError):  # the server answers 400: "Client sent an HTTP request to an HTTPS server"
        plain.encrypt(b"x")
