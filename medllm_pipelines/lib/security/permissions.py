"""The permission matrix (``permissions.yaml``, versioned data): which role may take which action, and which need MFA.

Kept apart from :mod:`~medllm_pipelines.lib.security.rbac` (principals and
decisions) because it is pure data interpretation: reading it needs no key
service, so documentation and tests can list the matrix without Vault.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

__all__ = ["PERMISSIONS_PATH", "PermissionMatrix", "load_permissions"]

PERMISSIONS_PATH = Path(__file__).with_name("permissions.yaml")


@dataclass(frozen=True)
class PermissionMatrix:
    version: str
    roles: dict[str, str]
    actions: dict[str, str]
    mfa_actions: frozenset[str]
    grants: dict[str, frozenset[str]]
    mfa_period_s: int
    mfa_digits: int
    mfa_drift_steps: int
    mfa_max_failures: int

    def allows(self, role: str, action: str) -> bool:
        return action in self.grants.get(role, frozenset())

    def requires_mfa(self, action: str) -> bool:
        return action in self.mfa_actions

    def roles_allowed(self, action: str) -> list[str]:
        return sorted(role for role, actions in self.grants.items() if action in actions)


@lru_cache(maxsize=4)
def load_permissions(path: Path = PERMISSIONS_PATH) -> PermissionMatrix:
    """Parse and validate the matrix: every name used must be declared."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    roles = {str(k): str(v) for k, v in raw["roles"].items()}
    actions: dict[str, str] = {}
    mfa_actions: set[str] = set()
    for name, spec in raw["actions"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("mfa"), bool):
            raise ValueError(f"permissions: action {name!r} needs an explicit mfa: true|false")
        actions[str(name)] = str(spec.get("description", ""))
        if spec["mfa"]:
            mfa_actions.add(str(name))
    grants: dict[str, frozenset[str]] = {}
    for role, granted in raw["grants"].items():
        if role not in roles:
            raise ValueError(f"permissions: grants name undeclared role {role!r}")
        unknown = sorted(set(granted) - set(actions))
        if unknown:
            raise ValueError(f"permissions: role {role!r} is granted undeclared actions {unknown}")
        grants[str(role)] = frozenset(granted)
    missing = sorted(set(roles) - set(grants))
    if missing:
        raise ValueError(f"permissions: roles without a grants entry {missing} (use [] for none)")
    mfa = raw["mfa"]
    return PermissionMatrix(
        version=str(raw["version"]),
        roles=roles,
        actions=actions,
        mfa_actions=frozenset(mfa_actions),
        grants=grants,
        mfa_period_s=int(mfa["period_s"]),
        mfa_digits=int(mfa["digits"]),
        mfa_drift_steps=int(mfa["drift_steps"]),
        mfa_max_failures=int(mfa["max_failures"]),
    )
