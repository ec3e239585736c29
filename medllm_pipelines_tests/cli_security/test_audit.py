"""`medllm audit verify`: an intact log passes; an edited, deleted or truncated entry is named."""

from __future__ import annotations

import shutil
from pathlib import Path

from medllm_pipelines_tests.cli_security.world import World


def _home_with_log(world: World, tmp_path: Path, entries: int = 5) -> Path:
    home = tmp_path / "home"
    (home / "security").mkdir(parents=True)
    shutil.copy(world.home / "security" / "principals.json", home / "security" / "principals.json")
    for _ in range(entries):
        assert world.cli("audit", "show", "--as", "auditor", home=home).exit_code == 0
    return home


def _lines(home: Path) -> list[str]:
    return (home / "security" / "audit.jsonl").read_text().splitlines(keepends=True)


def _write(home: Path, lines: list[str]) -> None:
    (home / "security" / "audit.jsonl").write_text("".join(lines))


def test_audit_verify_passes_on_an_intact_log(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 0 and "intact: 6 entries" in result.stdout  # 5 + its own decision


def test_audit_verify_names_an_edited_entry(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    lines = _lines(home)
    lines[2] = lines[2].replace('"outcome":"allowed"', '"outcome":"denied"')
    _write(home, lines)
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 1 and "BROKEN at seq 2" in result.stderr and "edited" in result.stderr


def test_audit_verify_names_a_deleted_entry(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    lines = _lines(home)
    del lines[1]
    _write(home, lines)
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 1 and "BROKEN at seq 1" in result.stderr and "deleted" in result.stderr


def test_audit_verify_detects_a_truncated_tail(world: World, tmp_path: Path) -> None:
    home = _home_with_log(world, tmp_path)
    _write(home, _lines(home)[:-2])
    result = world.cli("audit", "verify", "--as", "auditor", home=home)
    assert result.exit_code == 1 and "cut from the end" in result.stderr
    # the log refuses appends now, so other commands stop rather than act unaudited
    assert world.cli("audit", "show", "--as", "auditor", home=home).exit_code == 1
