"""Security commands of ``medllm``: principals, audit, re-identification, key rotation, export.

Every command names its acting principal (``--as NAME`` or ``MEDLLM_PRINCIPAL``)
and, for actions the permission matrix marks as privileged, takes a fresh TOTP
code (``--totp``). Every decision, allowed or denied, is one audit entry
(:class:`~medllm_pipelines.lib.security.rbac.AccessControl`); effects are
further entries. Nothing identifiable is printed or audited, except the answer
of an allowed re-identification, which is printed (never audited) for the
privacy officer who asked. One module per command group; what they share
(fail-closed context, exit codes) is :mod:`.context`.
"""

from __future__ import annotations

import click

from medllm_pipelines.cli_security.audit import audit
from medllm_pipelines.cli_security.export import export_command
from medllm_pipelines.cli_security.governance import governance_agree
from medllm_pipelines.cli_security.keys import keys
from medllm_pipelines.cli_security.principals import principals
from medllm_pipelines.cli_security.reidentify import reidentify_command

__all__ = ["register"]


def register(main: click.Group) -> None:
    """Add the security commands to ``medllm`` (and ``agree`` to its governance group)."""
    for command in (principals, audit, keys, reidentify_command, export_command):
        main.add_command(command)
    governance = main.commands.get("governance")
    if isinstance(governance, click.Group):
        governance.add_command(governance_agree)
