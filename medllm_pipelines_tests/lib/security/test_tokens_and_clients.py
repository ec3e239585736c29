"""Service tokens signed by Vault transit, and OAuth client credentials stored hashed and sealed."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from medllm_pipelines.lib.security.clients import ClientError, ClientRegistry
from medllm_pipelines.lib.security.tokens import TokenError, TokenIssuer, TokenVerifier
from medllm_pipelines.lib.security.vault_client import SIGNING_KEY_TYPE


@pytest.fixture
def signing_key(transit_service: Any) -> str:
    name = f"test-tokens-{uuid.uuid4().hex[:8]}"  # its own key: the test rotates it
    transit_service.ensure_transit({name: SIGNING_KEY_TYPE})
    return name


def test_a_token_verifies_and_names_its_principal(transit_service: Any, signing_key: str) -> None:
    token, claims = TokenIssuer(transit_service, key_name=signing_key, ttl_s=60).issue("alice", "clinician", "c1")
    verified = TokenVerifier(transit_service, key_name=signing_key).verify(token)
    assert (verified.subject, verified.role, verified.client_id, verified.token_id) == \
        ("alice", "clinician", "c1", claims.token_id)
    assert verified.expires_at - verified.issued_at == 60


def test_a_rotated_key_keeps_old_tokens_valid_and_signs_new_ones(transit_service: Any, signing_key: str) -> None:
    issuer = TokenIssuer(transit_service, key_name=signing_key, ttl_s=60)
    verifier = TokenVerifier(transit_service, key_name=signing_key)
    old, _ = issuer.issue("alice", "clinician", "c1")
    verifier.verify(old)
    transit_service.rotate_key(signing_key)
    new, claims = issuer.issue("alice", "clinician", "c1")
    assert claims.key_version == 2
    verifier._refreshed_at = 0.0  # the verifier refetches public keys at most every 10 s; pretend time passed
    assert verifier.verify(new).key_version == 2 and verifier.verify(old).key_version == 1


@pytest.mark.parametrize("mutate", ["payload", "signature", "alg"])
def test_tampered_tokens_are_refused(transit_service: Any, signing_key: str, mutate: str) -> None:
    import base64

    token, _ = TokenIssuer(transit_service, key_name=signing_key, ttl_s=60).issue("alice", "clinician", "c1")
    header, payload, signature = token.split(".")
    if mutate == "payload":
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = "mallory"
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    elif mutate == "signature":
        signature = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    else:
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    with pytest.raises(TokenError) as refused:
        TokenVerifier(transit_service, key_name=signing_key).verify(f"{header}.{payload}.{signature}")
    assert refused.value.reason == "token_invalid"


def test_an_expired_token_says_so(transit_service: Any, signing_key: str) -> None:
    issuer = TokenIssuer(transit_service, key_name=signing_key, ttl_s=30, clock=lambda: time.time() - 120)
    token, _ = issuer.issue("alice", "clinician", "c1")
    with pytest.raises(TokenError) as refused:
        TokenVerifier(transit_service, key_name=signing_key).verify(token)
    assert refused.value.reason == "token_expired"


def test_a_client_secret_is_stored_hashed_and_shown_once(tmp_path: Path, transit_service: Any) -> None:
    registry = ClientRegistry(tmp_path / "clients.json", transit_service)
    issued = registry.add("alice")
    stored = (tmp_path / "clients.json").read_text()
    assert issued.client_secret not in stored and "scrypt$" in stored
    assert (tmp_path / "clients.json").stat().st_mode & 0o777 == 0o600
    assert registry.authenticate(issued.client_id, issued.client_secret).principal == "alice"
    with pytest.raises(ClientError):
        registry.authenticate(issued.client_id, issued.client_secret + "x")


def test_a_client_edited_by_hand_or_revoked_is_refused(tmp_path: Path, transit_service: Any) -> None:
    path = tmp_path / "clients.json"
    registry = ClientRegistry(path, transit_service)
    issued = registry.add("alice")
    data = json.loads(path.read_text())
    data["clients"][issued.client_id]["principal"] = "admin1"  # re-point the client at a more powerful principal
    path.write_text(json.dumps(data))
    with pytest.raises(ClientError, match="modified outside"):
        registry.authenticate(issued.client_id, issued.client_secret)
    other = registry.add("bob")
    registry.revoke(other.client_id)
    with pytest.raises(ClientError, match="revoked"):
        registry.authenticate(other.client_id, other.client_secret)


def test_a_verified_token_is_reused_only_until_it_expires(transit_service: Any, signing_key: str) -> None:
    now = [time.time()]
    issuer = TokenIssuer(transit_service, key_name=signing_key, ttl_s=30, clock=lambda: now[0])
    verifier = TokenVerifier(transit_service, key_name=signing_key, clock=lambda: now[0])
    token, _ = issuer.issue("alice", "clinician", "c1")
    assert verifier.verify(token) is verifier.verify(token)  # the second answer comes from the cache
    now[0] += 3600  # the cached claims are not used past the token's expiry: verified again, and refused
    with pytest.raises(TokenError) as refused:
        verifier.verify(token)
    assert refused.value.reason == "token_expired"
