"""Short-lived bearer tokens (JWT, EdDSA) signed by a Vault transit key (clause 6.1.3, row P1-P3 access control).

The private key never leaves Vault: :class:`TokenIssuer` sends the JWS signing input to transit ``sign`` and
attaches the signature; :class:`TokenVerifier` checks signatures locally with the public keys transit exports
(cached, refreshed when a token names an unknown key version), so verifying costs no Vault round trip and a
rotated key keeps verifying tokens of the previous version until ``min_decryption_version`` retires it.

Claims: ``iss``, ``aud``, ``sub`` (the principal), ``role`` (informational: every request is re-authorised
against the principal registry, so a role change applies at once), ``client_id``, ``iat``/``nbf``/``exp``, ``jti``.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medllm_pipelines.lib.security.errors import SecurityError

__all__ = ["DEFAULT_AUDIENCE", "DEFAULT_ISSUER", "TokenClaims", "TokenError", "TokenIssuer", "TokenVerifier"]

DEFAULT_ISSUER = "medllm-pipelines"
DEFAULT_AUDIENCE = "medllm-api"
ALGORITHM = "EdDSA"
LEEWAY_S = 5
MIN_REFRESH_INTERVAL_S = 10.0
VERIFIED_CACHE_SIZE = 4096


class TokenError(SecurityError):
    """A token that cannot be accepted; ``reason`` is the problem's reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Signer(Protocol):
    """What transit offers: ``TransitKeyService.sign`` / ``public_keys``."""

    def sign(self, data: bytes, *, key_name: str = ...) -> tuple[bytes, int]: ...

    def public_keys(self, key_name: str = ...) -> dict[int, bytes]: ...


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    role: str
    client_id: str
    issued_at: int
    expires_at: int
    token_id: str
    key_version: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _kid(key_name: str, version: int) -> str:
    return f"{key_name}:v{version}"


class TokenIssuer:
    """Issues tokens; every signature is made by Vault."""

    def __init__(self, signer: Signer, *, key_name: str, ttl_s: int = 900, issuer: str = DEFAULT_ISSUER,
                 audience: str = DEFAULT_AUDIENCE, clock: Callable[[], float] = time.time) -> None:
        if not 30 <= ttl_s <= 3600:
            raise ValueError("token lifetime must be between 30 s and 1 h (short-lived bearer tokens)")
        self._signer, self.key_name, self.ttl_s = signer, key_name, int(ttl_s)
        self.issuer, self.audience, self._clock = issuer, audience, clock

    def issue(self, subject: str, role: str, client_id: str) -> tuple[str, TokenClaims]:
        now = int(self._clock())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": subject, "role": role, "client_id": client_id,
                  "iat": now, "nbf": now, "exp": now + self.ttl_s, "jti": secrets.token_urlsafe(12)}
        # The key version is known only after signing; the header names the key, and the verifier tries the
        # version transit reports in the signature (kept in the header by signing twice would cost a round trip).
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.key_name}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
                         + "." + _b64url(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()))
        signature, version = self._signer.sign(signing_input.encode("ascii"), key_name=self.key_name)
        token = f"{signing_input}.{_b64url(signature)}"
        return token, TokenClaims(subject, role, client_id, now, now + self.ttl_s, str(claims["jti"]), version)


class TokenVerifier:
    """Verifies tokens with transit's exported public keys (cached; refreshed at most every 10 s)."""

    def __init__(self, signer: Signer, *, key_name: str, issuer: str = DEFAULT_ISSUER,
                 audience: str = DEFAULT_AUDIENCE, clock: Callable[[], float] = time.time) -> None:
        self._signer, self.key_name, self.issuer, self.audience, self._clock = signer, key_name, issuer, audience, clock
        self._keys: dict[int, Ed25519PublicKey] = {}
        self._refreshed_at = 0.0
        self._lock = threading.Lock()
        # Tokens already verified (a client sends the same one for 15 minutes): the signature check costs more
        # than the work of a cheap request. Bounded; an entry is used only until the token's own expiry.
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()

    def refresh(self) -> int:
        keys = self._signer.public_keys(self.key_name)
        with self._lock:
            self._keys = {version: Ed25519PublicKey.from_public_bytes(raw) for version, raw in keys.items()}
            self._refreshed_at = time.monotonic()
        return len(keys)

    def verify(self, token: str) -> TokenClaims:
        cached = self._verified.get(token) if isinstance(token, str) else None
        if cached is not None and cached.expires_at + LEEWAY_S >= self._clock():
            return cached
        claims = self._verify(token)
        with self._lock:
            self._verified[token] = claims
            while len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str) -> TokenClaims:
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 4096:
            raise TokenError("token_malformed", "the bearer token is not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("token_malformed", "the bearer token's header cannot be read") from None
        if header.get("alg") != ALGORITHM or header.get("kid") != self.key_name:
            raise TokenError("token_invalid", "the token was not signed by this service's key")
        claims = self._decode(token)
        if claims is None and time.monotonic() - self._refreshed_at >= MIN_REFRESH_INTERVAL_S:
            self.refresh()  # a rotated key: fetch the new public key once, then try again
            claims = self._decode(token)
        if claims is None:
            raise TokenError("token_invalid", "the token's signature does not verify")
        return claims

    def _decode(self, token: str) -> TokenClaims | None:
        if not self._keys and time.monotonic() - self._refreshed_at >= MIN_REFRESH_INTERVAL_S:
            self.refresh()
        for version, key in sorted(self._keys.items(), reverse=True):
            try:  # times are checked below against this verifier's clock (PyJWT would read the wall clock)
                payload: Mapping[str, Any] = jwt.decode(
                    token, key, algorithms=[ALGORITHM], audience=self.audience, issuer=self.issuer,
                    options={"require": ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"], "verify_exp": False,
                             "verify_nbf": False, "verify_iat": False})
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise TokenError("token_invalid", "the bearer token's claims are not acceptable") from None
            try:
                expires, not_before = int(payload["exp"]), int(payload["nbf"])
            except (TypeError, ValueError):
                raise TokenError("token_invalid", "the bearer token's times are not numbers") from None
            now = self._clock()
            if now > expires + LEEWAY_S:
                raise TokenError("token_expired", "the bearer token has expired; request a new one")
            if now + LEEWAY_S < not_before:
                raise TokenError("token_invalid", "the bearer token is not valid yet")
            return TokenClaims(str(payload["sub"]), str(payload.get("role", "")), str(payload.get("client_id", "")),
                               int(payload["iat"]), expires, str(payload["jti"]), version)
        return None
