"""Dagster resource reading the REST service's encrypted document store (feedback, sessions, notes).

The store is the service's (``medllm serve``): the same URL (``MEDLLM_SERVE_STORE_URL``, default a SQLite file under
``MEDLLM_HOME/serving``) and the same Vault data key, so the pipelines read what clinicians recorded without a copy.
Production binds the URL as ``EnvVar("MEDLLM_SERVE_STORE_URL")`` so a database password never reaches the UI.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr

from medllm_pipelines.lib.scenarios.store import DocumentStore
from medllm_pipelines.resources.vault import VaultResource

__all__ = ["ServingStoreResource"]

SQLITE_PREFIX = "sqlite:///"


class ServingStoreResource(ConfigurableResource):
    """The service's :class:`DocumentStore`, opened on first use with the Vault resource's data keys."""

    store_url: str = Field(
        repr=False,
        description="sqlite:///<path> (embedded) or postgresql+psycopg2://... (EnvVar MEDLLM_SERVE_STORE_URL).",
    )
    vault: VaultResource

    _store: DocumentStore | None = PrivateAttr(default=None)

    def __repr__(self) -> str:  # the URL may hold a password
        return f"ServingStoreResource(vault={self.vault!r})"

    def __str__(self) -> str:
        return repr(self)

    def _url(self) -> str:
        url = self.store_url
        if isinstance(url, EnvVar):  # used outside a run (CLI, notebooks): Dagster has not substituted it
            return url.get_value() or ""
        return url

    def exists(self) -> bool:
        """False while an embedded service has never written its SQLite file (no feedback yet, not an error).

        Opening the store would create the file, and the service then finds a database it did not set up.
        """
        url = self._url()
        if url.startswith(SQLITE_PREFIX) and url != "sqlite:///:memory:":
            return Path(url.removeprefix(SQLITE_PREFIX)).is_file()
        return True

    def get(self) -> DocumentStore:
        if self._store is None:
            self._store = DocumentStore(self._url(), self.vault.key_service())
        return self._store

    def teardown_after_execution(self, context: object) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
