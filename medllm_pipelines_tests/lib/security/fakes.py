"""Test doubles for the security layer. Never import these outside tests."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medllm_pipelines.lib.security.errors import DataKeyUnwrapError


class LocalTestKeyProvider:
    """In-process DataKeyProvider that wraps data keys with a random AES key.

    Lets the envelope format be tested at full speed without a server; the
    wrapping key lives only in this object, so nothing survives the test.
    """

    def __init__(self, key_ref: str = "test/local-kek") -> None:
        self._key_ref = key_ref
        self._kek = AESGCM(AESGCM.generate_key(bit_length=256))
        self.generated = 0
        self.unwrapped = 0

    @property
    def key_ref(self) -> str:
        return self._key_ref

    def generate_data_key(self) -> tuple[bytes, str]:
        key = os.urandom(32)
        nonce = os.urandom(12)
        sealed = self._kek.encrypt(nonce, key, self._key_ref.encode())
        self.generated += 1
        return key, "local:v1:" + base64.b64encode(nonce + sealed).decode()

    def unwrap_data_key(self, wrapped: str) -> bytes:
        prefix, _, payload = wrapped.partition("local:v1:")
        try:
            raw = base64.b64decode(payload, validate=True)
            key = self._kek.decrypt(raw[:12], raw[12:], self._key_ref.encode())
        except (ValueError, InvalidTag):
            raise DataKeyUnwrapError("wrapped key is not valid for this test key") from None
        if prefix:
            raise DataKeyUnwrapError("wrapped key has an unknown prefix")
        self.unwrapped += 1
        return key
