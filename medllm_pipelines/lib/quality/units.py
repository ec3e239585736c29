"""Unit conversion to one canonical UCUM unit per concept, with a maintained units library.

UCUM codes are parsed by ``ucumvert`` into ``pint`` units; the factor between a
source unit and the concept's canonical unit comes from pint. Mass <-> molar
concentration (glucose mg/dL -> mmol/L) goes through pint's ``chemistry``
context with the analyte's molar mass as declared in ``cleaning_rules.yaml``.

Not everything is a unit conversion: HbA1c reported by the IFCC method in
mmol/mol and by NGSP/DCCT in % measure different things, related by the
IFCC-NGSP *master equation* (NGSP % = 0.09148 x IFCC + 2.152, affine). pint
would happily "convert" 48 mmol/mol to 4.8 % (mmol/mol is dimensionless),
which is clinically wrong, so such relations are declared as equations in
the rules file and never derived from units.

Converters are built once per (concept, source unit) when the rules load;
cleaning then applies ``value * scale + offset`` per row, with no unit parsing
in the row loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

UCUM_LIBRARY = "ucumvert"
PINT = "pint"
EQUATION = "declared_equation"


@dataclass(frozen=True)
class UnitConversion:
    """``canonical = value * scale + offset``, and where the numbers came from."""

    concept: str
    source_unit: str
    canonical_unit: str
    scale: float
    offset: float
    method: str  # "identity" | "pint" | "pint:chemistry" | "declared_equation" | "alias:<method>"
    note: str = ""

    def __call__(self, value: float) -> float:
        return value * self.scale + self.offset


class UnitError(ValueError):
    """A declared unit that is not UCUM or cannot be converted to the canonical unit."""


@lru_cache(maxsize=1)
def _registry() -> tuple[Any, Any]:
    """(pint registry with UCUM definitions, UCUM code -> pint quantity)."""
    from ucumvert import (
        PintUcumRegistry,
        UcumToPintTransformer,
        get_ucum_parser,
        parse_ucum,
    )

    registry = PintUcumRegistry()
    parser = get_ucum_parser()
    # ucumvert's own from_ucum builds quantities in pint's *application* registry,
    # whose contexts are not this one's; bind the transformer to our registry.
    transform = UcumToPintTransformer(ureg=registry).transform

    def to_pint(code: str) -> Any:
        return transform(parse_ucum(code, parser))

    return registry, to_pint


def ucum_quantity(code: str) -> Any:
    """A UCUM unit code as a pint quantity of magnitude 1 (raises :class:`UnitError`)."""
    _, to_pint = _registry()
    try:
        return 1.0 * to_pint(code)
    except Exception as exc:  # lark/ucumvert raise several types for invalid codes
        raise UnitError(f"{code!r} is not a valid UCUM unit") from exc


def pint_conversion(concept: str, source_unit: str, canonical_unit: str,
                    molar_mass_g_per_mol: float | None = None) -> UnitConversion:
    """The affine map source -> canonical computed by pint (two points: 0 and 1)."""
    registry, _ = _registry()
    source, target = ucum_quantity(source_unit), ucum_quantity(canonical_unit)
    method = PINT
    try:
        if source.dimensionality == target.dimensionality:
            zero = (0.0 * source).to(target.units).magnitude
            one = (1.0 * source).to(target.units).magnitude
        elif molar_mass_g_per_mol is not None:
            mw = registry.Quantity(molar_mass_g_per_mol, "g/mol")
            zero = (0.0 * source).to(target.units, "chemistry", mw=mw).magnitude
            one = (1.0 * source).to(target.units, "chemistry", mw=mw).magnitude
            method = f"{PINT}:chemistry"
        else:
            raise UnitError(f"{source_unit} -> {canonical_unit} changes dimension and {concept} declares no molar mass")
    except UnitError:
        raise
    except Exception as exc:  # pint DimensionalityError and friends
        raise UnitError(f"{source_unit} cannot be converted to {canonical_unit} for {concept}") from exc
    note = f"molar mass {molar_mass_g_per_mol} g/mol" if method.endswith("chemistry") else ""
    return UnitConversion(concept, source_unit, canonical_unit, float(one - zero), float(zero), method, note)


def build_conversions(concepts: dict[str, dict[str, Any]], aliases: dict[str, str]) -> dict[tuple[str, str], UnitConversion]:
    """Every (concept, source unit) the rules accept -> its converter, computed once.

    Per concept: ``canonical_unit``; ``accepted_units`` (UCUM codes converted by
    pint, with ``molar_mass_g_per_mol`` where mass and molar units meet);
    ``equations`` (declared affine relations that are not unit conversions).
    ``aliases`` maps non-UCUM spellings seen in feeds to UCUM codes.
    """
    table: dict[tuple[str, str], UnitConversion] = {}
    for concept, spec in concepts.items():
        canonical = spec["canonical_unit"]
        ucum_quantity(canonical)  # the canonical unit itself must be UCUM
        table[(concept, canonical)] = UnitConversion(concept, canonical, canonical, 1.0, 0.0, "identity")
        molar_mass = spec.get("molar_mass_g_per_mol")
        for unit in spec.get("accepted_units") or []:
            table[(concept, unit)] = pint_conversion(concept, unit, canonical, molar_mass)
        for unit, equation in (spec.get("equations") or {}).items():
            table[(concept, unit)] = UnitConversion(concept, unit, canonical, float(equation["scale"]),
                                                    float(equation["offset"]), EQUATION, str(equation.get("name", "")))
    for alias, code in aliases.items():
        for (concept, unit), conversion in list(table.items()):
            if unit == code:
                table[(concept, alias)] = UnitConversion(concept, alias, conversion.canonical_unit, conversion.scale,
                                                         conversion.offset, f"alias:{conversion.method}",
                                                         f"alias of UCUM {code}")
    return table
