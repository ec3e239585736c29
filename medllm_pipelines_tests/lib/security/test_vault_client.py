"""TransitKeyService against a real OpenBao: keys, HMAC pseudonyms, failing closed."""

from __future__ import annotations

import pickle
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import pytest

from medllm_pipelines.lib.security.errors import (
    DataKeyUnwrapError,
    VaultPermissionError,
    VaultRequestError,
    VaultUnavailableError,
)
from medllm_pipelines.lib.security.vault_client import (
    DATA_KEY_TYPE,
    PSEUDONYM_KEY_TYPE,
    HmacDigests,
    TransitKeyService,
)
from medllm_pipelines.lib.services.openbao import BaoServer, start_dev_server, stop_dev_server

SECRET_TOKEN = "medllm-test-token-must-never-leak-7f3a9c"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def own_key_service(server: BaoServer, **key_types: str) -> TransitKeyService:
    """A service on fresh keys, for tests that rotate or retire versions."""
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"test-{role}-{suffix}" for role in key_types}
    service = TransitKeyService(
        server.addr,
        server.token,
        data_key_name=names.get("data", "medllm-raw-zone"),
        pseudonym_key_name=names.get("pseudonym", "medllm-pseudonym"),
    )
    service.ensure_transit({names[role]: key_type for role, key_type in key_types.items()})
    return service


# -- data keys -------------------------------------------------------------------


def test_data_keys_are_fresh_256_bit_and_unwrap(transit_service: TransitKeyService) -> None:
    key, wrapped = transit_service.generate_data_key()
    other_key, other_wrapped = transit_service.generate_data_key()

    assert len(key) == 32 and key != other_key
    assert wrapped.startswith("vault:v") and wrapped != other_wrapped
    assert transit_service.unwrap_data_key(wrapped) == key
    assert transit_service.key_ref == "transit/medllm-raw-zone"


def test_tampered_wrapped_key_is_a_unwrap_error_not_an_outage(transit_service: TransitKeyService) -> None:
    _, wrapped = transit_service.generate_data_key()
    with pytest.raises(DataKeyUnwrapError, match="authentication failed"):
        transit_service.unwrap_data_key(wrapped[:-6] + "AAAAA=")


def test_rotation_then_rewrap_keeps_every_data_key(openbao_server: BaoServer) -> None:
    service = own_key_service(openbao_server, data=DATA_KEY_TYPE)
    key, wrapped_v1 = service.generate_data_key()

    assert service.rotate_key() == 2
    assert service.unwrap_data_key(wrapped_v1) == key
    wrapped_v2 = service.rewrap(wrapped_v1)
    assert wrapped_v2.startswith("vault:v2:")
    info = service.set_min_decryption_version(2)

    assert (info.latest_version, info.min_decryption_version) == (2, 2)
    assert service.unwrap_data_key(wrapped_v2) == key
    with pytest.raises(DataKeyUnwrapError):
        service.unwrap_data_key(wrapped_v1)
    assert service.generate_data_key()[1].startswith("vault:v2:")


def test_small_secret_is_bound_to_its_context(transit_service: TransitKeyService) -> None:
    token = transit_service.encrypt(b"db-password", context=b"warehouse/prod")

    assert token.startswith("vault:v") and "db-password" not in token
    assert transit_service.decrypt(token, context=b"warehouse/prod") == b"db-password"
    for wrong_context in (b"warehouse/dev", None):
        with pytest.raises(VaultRequestError, match="authentication failed"):
            transit_service.decrypt(token, context=wrong_context)


# -- pseudonym HMACs -------------------------------------------------------------


def test_hmac_is_deterministic_hex_and_value_dependent(transit_service: TransitKeyService) -> None:
    values = ["MRN-00412345", "MRN-00412346", "张三", "", "MRN-00412345"]
    first = transit_service.hmac_many(values)
    second = transit_service.hmac_many(values)

    assert isinstance(first, HmacDigests) and isinstance(first, list)
    assert first == second
    assert first[0] == first[4] and len(set(first)) == 4
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in first)
    assert first.key_version == transit_service.key_info("medllm-pseudonym").latest_version
    assert transit_service.hmac_many([]) == []


def test_hmac_depends_on_the_key(openbao_server: BaoServer, transit_service: TransitKeyService) -> None:
    other = own_key_service(openbao_server, pseudonym=PSEUDONYM_KEY_TYPE)
    values = ["MRN-00412345", "MRN-00412346"]
    assert set(other.hmac_many(values)).isdisjoint(transit_service.hmac_many(values))


def test_batched_hmac_equals_one_by_one(openbao_server: BaoServer, transit_service: TransitKeyService) -> None:
    values = [f"MRN-{i:08d}" for i in range(1001)]  # 3 requests at 400 per batch
    batched = transit_service.hmac_many(values)
    tiny_batches = TransitKeyService(openbao_server.addr, openbao_server.token, hmac_batch_size=7).hmac_many(values)

    assert batched == tiny_batches
    for index in (0, 399, 400, 999, 1000):
        assert transit_service.hmac_many([values[index]]) == [batched[index]]


def test_pseudonym_rotation_changes_digests_and_old_version_reproduces(openbao_server: BaoServer) -> None:
    service = own_key_service(openbao_server, pseudonym=PSEUDONYM_KEY_TYPE)
    values = ["MRN-1", "MRN-2"]
    before = service.hmac_many(values)

    service.rotate_key(service.pseudonym_key_name)
    after = service.hmac_many(values)

    assert (before.key_version, after.key_version) == (1, 2)
    assert set(before).isdisjoint(after)
    assert service.hmac_many(values, key_version=1) == before


# -- key management ---------------------------------------------------------------


def test_ensure_transit_is_idempotent_and_creates_hmac_only_keys(openbao_server: BaoServer) -> None:
    mount = f"transit-{uuid.uuid4().hex[:6]}"
    service = TransitKeyService(openbao_server.addr, openbao_server.token, transit_mount=mount)

    first = service.ensure_transit()
    second = service.ensure_transit()

    assert first == second
    assert first["medllm-raw-zone"].key_type == "aes256-gcm96"
    pseudonym = first["medllm-pseudonym"]
    assert pseudonym.key_type == "hmac" and not pseudonym.exportable and not pseudonym.allow_plaintext_backup
    with pytest.raises(VaultRequestError):  # an HMAC-only key cannot encrypt
        TransitKeyService(
            openbao_server.addr, openbao_server.token, transit_mount=mount, data_key_name="medllm-pseudonym"
        ).encrypt(b"x")


def test_ensure_transit_refuses_a_key_of_the_wrong_type(transit_service: TransitKeyService) -> None:
    with pytest.raises(VaultRequestError, match="exists with type 'aes256-gcm96'"):
        transit_service.ensure_transit({"medllm-raw-zone": "hmac"})


def test_unknown_key_is_a_request_error(openbao_server: BaoServer) -> None:
    service = TransitKeyService(openbao_server.addr, openbao_server.token, data_key_name="no-such-key")
    with pytest.raises(VaultRequestError, match="no-such-key|not found"):
        service.generate_data_key()


# -- failing closed ---------------------------------------------------------------


def assert_token_absent(exc: BaseException, token: str) -> None:
    chain: BaseException | None = exc
    while chain is not None:
        assert token not in str(chain) and token not in repr(chain)
        chain = chain.__cause__ or chain.__context__


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.health(),
        lambda s: s.generate_data_key(),
        lambda s: s.unwrap_data_key("vault:v1:AAAA"),
        lambda s: s.hmac_many(["MRN-00412345"]),
        lambda s: s.ensure_transit(),
    ],
    ids=["health", "generate", "unwrap", "hmac", "ensure"],
)
def test_unreachable_vault_fails_fast_and_closed(call: Callable[[TransitKeyService], Any]) -> None:
    service = TransitKeyService(f"http://127.0.0.1:{closed_port()}", SECRET_TOKEN, timeout=2)
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="cannot connect") as caught:
        call(service)
    assert time.monotonic() - started < 1.5
    assert_token_absent(caught.value, SECRET_TOKEN)
    assert "MRN-00412345" not in str(caught.value)


def test_wrong_token_is_a_permission_error_without_the_token(openbao_server: BaoServer) -> None:
    service = TransitKeyService(openbao_server.addr, SECRET_TOKEN)
    with pytest.raises(VaultPermissionError, match="permission denied") as caught:
        service.generate_data_key()
    assert_token_absent(caught.value, SECRET_TOKEN)


def test_sealed_vault_is_unavailable(tmp_path: Path, bao_binary: str) -> None:
    server = start_dev_server(tmp_path / "sealed", port=0, bao_binary=bao_binary)
    try:
        service = TransitKeyService(server.addr, server.token)
        service.generate_data_key()
        hvac.Client(url=server.addr, token=server.token).sys.seal()

        assert service.health()["sealed"] is True
        with pytest.raises(VaultUnavailableError, match="sealed") as caught:
            service.generate_data_key()
        assert_token_absent(caught.value, server.token)
    finally:
        stop_dev_server(tmp_path / "sealed")


def test_token_never_shows_in_repr_or_pickle() -> None:
    service = TransitKeyService("http://127.0.0.1:8200", SECRET_TOKEN)
    assert SECRET_TOKEN not in repr(service) and SECRET_TOKEN not in str(service)
    with pytest.raises(TypeError, match="must not be pickled"):
        pickle.dumps(service)


@pytest.mark.parametrize(
    ("addr", "allowed"),
    [
        ("http://127.0.0.1:8200", True),
        ("http://localhost:8200", True),
        ("https://vault.hospital.internal:8200", True),
        ("http://vault.hospital.internal:8200", False),
        ("https://user:pw@vault.hospital.internal", False),
        ("vault.hospital.internal:8200", False),
    ],
)
def test_token_is_only_sent_over_tls_or_loopback(addr: str, allowed: bool) -> None:
    if allowed:
        TransitKeyService(addr, SECRET_TOKEN)
    else:
        with pytest.raises(ValueError) as caught:
            TransitKeyService(addr, SECRET_TOKEN)
        assert SECRET_TOKEN not in str(caught.value)


def test_missing_token_is_refused_before_any_request() -> None:
    with pytest.raises(VaultPermissionError, match="no Vault token"):
        TransitKeyService("http://127.0.0.1:8200", "")
