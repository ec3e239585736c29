"""The package's layers, enforced on every import statement (module level and inside functions).

CONVENTIONS rules 15-17 and issue 10: ``lib/`` is domain code (no dagster, no
settings, no wiring); a stage's wiring talks to another stage only through
asset keys and the shared ``defs`` modules; ``resources/`` never reaches into
``defs/``; run-time settings reach assets through a resource; nobody imports
another module's private name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import medllm_pipelines

PACKAGE_ROOT = Path(medllm_pipelines.__file__).resolve().parent
PACKAGE = "medllm_pipelines"
# defs modules every stage may import: keys, shared checks, metadata and audit-table helpers, resources, jobs
SHARED_DEFS = {"keys", "checks", "metadata", "audit_tables", "resources", "jobs"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (absolute)
    names: tuple[str, ...]  # names taken by `from target import ...` (empty for `import target`)
    line: int

    def __str__(self) -> str:
        taken = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.module}:{self.line} imports {self.target}{taken}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def package_imports() -> Iterator[Import]:
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, node, path.name == "__init__.py")
                yield Import(module, target, tuple(alias.name for alias in node.names), node.lineno)


IMPORTS = list(package_imports())


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _stage_of_defs(name: str) -> str | None:
    """'medllm_pipelines.defs.ingest.assets' -> 'ingest'; shared defs modules -> None."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[:2] == [PACKAGE, "defs"] and parts[2] not in SHARED_DEFS:
        return parts[2]
    return None


def _violations(rule) -> list[str]:
    return [str(imp) for imp in IMPORTS if rule(imp)]


def test_the_walk_sees_the_package() -> None:
    modules = {imp.module for imp in IMPORTS}
    assert f"{PACKAGE}.definitions" in modules and f"{PACKAGE}.lib.ingest.intake" in modules
    assert len(IMPORTS) > 500


def test_lib_imports_neither_dagster_nor_settings_nor_wiring() -> None:
    forbidden = ("dagster", f"{PACKAGE}.settings", f"{PACKAGE}.defs", f"{PACKAGE}.resources", f"{PACKAGE}.definitions",
                 f"{PACKAGE}.runner", f"{PACKAGE}.cli")
    assert _violations(
        lambda imp: _under(imp.module, f"{PACKAGE}.lib")
        and (any(_under(imp.target, f) for f in forbidden) or imp.target.startswith(f"{PACKAGE}.cli"))
    ) == []


def test_no_stage_wiring_imports_another_stage() -> None:
    def crosses(imp: Import) -> bool:
        own, other = _stage_of_defs(imp.module), _stage_of_defs(imp.target)
        if own is None:
            return False
        if imp.target == f"{PACKAGE}.defs" and imp.names:  # `from medllm_pipelines.defs import ingest`
            return any(name not in SHARED_DEFS and name != own for name in imp.names)
        return other is not None and other != own

    assert _violations(crosses) == []


def test_resources_do_not_import_defs() -> None:
    assert _violations(lambda imp: _under(imp.module, f"{PACKAGE}.resources") and _under(imp.target, f"{PACKAGE}.defs")) == []


def test_assets_read_settings_through_the_run_settings_resource() -> None:
    """Only the modules that build the Definitions and resources from Settings may import it."""
    allowed = {f"{PACKAGE}.definitions", f"{PACKAGE}.defs.resources"}
    assert _violations(
        lambda imp: _under(imp.module, f"{PACKAGE}.defs")
        and imp.module not in allowed
        and _under(imp.target, f"{PACKAGE}.settings")
    ) == []


def test_no_private_name_is_imported_across_modules() -> None:
    assert _violations(
        lambda imp: _under(imp.target, PACKAGE) and any(n.startswith("_") and not n.startswith("__") for n in imp.names)
    ) == []


def test_wiring_uses_no_private_dagster_module() -> None:
    assert _violations(
        lambda imp: (_under(imp.module, f"{PACKAGE}.defs") or _under(imp.module, f"{PACKAGE}.resources"))
        and imp.target.startswith("dagster._")
    ) == []


@pytest.mark.parametrize("rule", [test_no_stage_wiring_imports_another_stage, test_resources_do_not_import_defs])
def test_the_rules_catch_a_violation(rule, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that cannot fail is no rule: plant one violation of each and see it reported."""
    planted = {
        test_no_stage_wiring_imports_another_stage: Import(f"{PACKAGE}.defs.label.assets", f"{PACKAGE}.defs.ingest.assets", ("x",), 1),
        test_resources_do_not_import_defs: Import(f"{PACKAGE}.resources.landing", f"{PACKAGE}.defs.ingest.partitions", ("x",), 1),
    }[rule]
    monkeypatch.setattr(f"{__name__}.IMPORTS", [*IMPORTS, planted])
    with pytest.raises(AssertionError):
        rule()
