"""The permission matrix file: every name it uses must be declared, every action must say whether it needs MFA."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from medllm_pipelines.lib.security.permissions import PERMISSIONS_PATH, load_permissions


def _break_auditor_grants(raw: dict[str, Any]) -> None:
    raw["grants"]["auditor"].append("delete_everything")


def _drop_mfa_flag(raw: dict[str, Any]) -> None:
    del raw["actions"]["reidentify"]["mfa"]


def _drop_role_grants(raw: dict[str, Any]) -> None:
    del raw["grants"]["clinician"]


def _grant_undeclared_role(raw: dict[str, Any]) -> None:
    raw["grants"]["superuser"] = ["reidentify"]


@pytest.mark.parametrize(("edit", "why"), [
    (_break_auditor_grants, "undeclared actions"),
    (_drop_mfa_flag, "explicit mfa"),
    (_drop_role_grants, "roles without a grants entry"),
    (_grant_undeclared_role, "undeclared role"),
])
def test_a_matrix_file_that_is_not_self_consistent_is_rejected(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], why: str
) -> None:
    raw = yaml.safe_load(PERMISSIONS_PATH.read_text())
    edit(raw)
    bad = tmp_path / "permissions.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=why):
        load_permissions(bad)


def test_the_shipped_matrix_names_who_may_reidentify() -> None:
    matrix = load_permissions()
    assert matrix.roles_allowed("reidentify") == ["privacy_officer"]
    assert matrix.requires_mfa("reidentify") and not matrix.allows("admin", "reidentify")
