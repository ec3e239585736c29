"""The encrypted raw zone as a resource (envelope keys from Vault)."""

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.resources.vault import VaultResource


class RawZoneResource(ConfigurableResource):
    path: str
    vault: VaultResource  # nested resource: the same configured Vault client

    _zone: RawZone | None = PrivateAttr(default=None)

    def get(self) -> RawZone:
        if self._zone is None:
            self._zone = RawZone(self.path, self.vault)
        return self._zone
