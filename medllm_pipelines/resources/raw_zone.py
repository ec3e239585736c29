"""The encrypted raw zone as a resource (envelope keys from Vault), its reads audited."""

from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from medllm_pipelines.lib.security.audit import AuditLog, transit_audit_log
from medllm_pipelines.lib.security.raw_zone import RawZone
from medllm_pipelines.resources.vault import VaultResource

READ_ACTION = "raw_zone.read"
PIPELINE_ACTOR = "pipeline"


class RawZoneResource(ConfigurableResource):
    """The raw zone; with ``audit_log`` set, identifiable reads are audited.

    One audit entry per table (``objects`` for landed files) per resource
    instance, i.e. per run in-process and per step with the multiprocess
    executor: the log records who read which table, not every row. The entry
    is written before the first decryption; if it cannot be (Vault down, log
    tampered with), the read fails.
    """

    path: str
    vault: VaultResource  # nested resource: the same configured Vault client
    audit_log: str | None = Field(
        default=None, description="The platform audit log (settings.audit_log_file); None: reads are not audited."
    )

    _zone: RawZone | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)
    _audited: set[str] = PrivateAttr(default_factory=set)
    _log: AuditLog | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._run_id = context.run_id

    def get(self) -> RawZone:
        if self._zone is None:
            self._zone = RawZone(self.path, self.vault, on_read=self._audit_read if self.audit_log else None)
        return self._zone

    def _append(self, action: str, resource: str, reason: str) -> None:
        if self._log is None:
            assert self.audit_log is not None
            self._log = transit_audit_log(self.audit_log, self.vault.key_service())
        self._log.append(actor=PIPELINE_ACTOR, role=PIPELINE_ACTOR, action=action, resource=resource,
                         outcome="succeeded", reason=reason, details={"dagster_run_id": self._run_id or "outside-a-run"})

    def audit_event(self, action: str, resource: str, reason: str) -> bool:
        """Append one pipeline event to the audit log (pseudonyms and codes only: the log refuses
        identifier-like content); False when this resource has no audit log configured."""
        if not self.audit_log:
            return False
        self._append(action, resource, reason)
        return True

    def _audit_read(self, table: str) -> None:
        if table in self._audited:
            return
        self._append(READ_ACTION, table, "pipeline read of the identifiable raw zone")
        self._audited.add(table)
