"""FHIR R4B validation that rejects exactly what ``fhir.resources`` rejects, faster.

``fhir.resources`` validates every nested element through Python-level
validators (null checks, one-of-many choice types, required primitives): about
0.15 ms per Observation, 6-8k resources/s on one core, 20x slower than reading
the JSON. Those validators depend only on the *shape* of a resource - its keys,
list lengths, nesting and the JSON type of each leaf (plus ``resourceType``) -
while the *values* are checked leaf by leaf by the primitive types (``code``,
``dateTime``, ``id``, ``uri``, ``decimal`` ...), each independently of the others.

So :class:`ResourceValidator`:

1. computes the shape of a resource and the list of its leaf values in one walk;
2. the first resource of a shape is validated in full by ``fhir.resources``; if
   it passes, the shape is *compiled*: for each leaf position the pydantic
   validator of that element's primitive type (taken from the model's field);
3. every later resource of that shape passes iff each of its leaf values passes
   its position's primitive validator (memoised per type and value: statuses,
   systems and codes repeat);
4. anything else - an unseen shape, a shape whose exemplar failed, a leaf that
   fails, a shape holding ``contained`` resources (the model class depends on a
   value) - goes to full ``fhir.resources`` validation, which is the arbiter
   and produces the error. A resource is therefore only ever *rejected* by full
   validation; the fast path can only accept.

The equivalence is checked by a differential test (mutated resources: same
accept/reject as full validation) in the unit tests and, larger, in
``benchmarks/bench_ingest.py``. ``mode="full"`` switches the shortcut off.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

FULL = "full"
SHAPE_CACHED = "shape_cached"
VALIDATION_MODES = (FULL, SHAPE_CACHED)

_ALWAYS_FULL = object()  # a compiled shape that cannot take the shortcut


@lru_cache(maxsize=None)
def model_class(resource_type: str) -> Any:
    """The ``fhir.resources.R4B`` model of a resource type (raises for unknown types)."""
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def shape_of(value: Any, leaves: list[Any]) -> Any:
    """The shape key of a JSON value; appends its leaf values to ``leaves`` in document order."""
    kind = type(value)
    if kind is dict:
        return tuple([(k, v) if k == "resourceType" else (k, shape_of(v, leaves)) for k, v in value.items()])
    if kind is list:
        return (list, *[shape_of(item, leaves) for item in value])
    leaves.append(value)
    return kind


@dataclass(frozen=True)
class _LeafCheck:
    """The validator of one primitive element (a scalar, or one item of a primitive list)."""

    validate: Callable[[Any], Any]
    in_list: bool

    def __call__(self, value: Any) -> bool:
        if value is None:  # null-ness is part of the shape, decided by the exemplar
            return True
        try:
            self.validate([value] if self.in_list else value)
        except Exception:  # noqa: BLE001 - pydantic ValidationError and the types' ValueErrors
            return False
        return True


@lru_cache(maxsize=None)
def _fields_by_alias(model: type) -> dict[str, Any]:
    return {(info.alias or name): info for name, info in model.model_fields.items()}


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


@lru_cache(maxsize=None)
def _field_plan(model: type, alias: str) -> tuple[str, Any]:
    """('complex', nested model) | ('primitive', _LeafCheck factory args) | ('unsupported', None)."""
    from fhir_core.types import FhirBase, FhirElementOrResourceBase
    from pydantic import TypeAdapter

    info = _fields_by_alias(model)[alias]
    inner = _unwrap_optional(info.annotation)
    item = inner
    if typing.get_origin(inner) in (list, typing.List):  # noqa: UP006 - runtime origin check
        (item,) = typing.get_args(inner)
    if isinstance(item, type) and issubclass(item, FhirBase):
        if issubclass(item, FhirElementOrResourceBase):
            return ("unsupported", None)  # contained resources: the class depends on a value
        return ("complex", item.get_model_klass())
    if info.metadata:
        annotated = typing.Annotated[(info.annotation, *info.metadata)]  # type: ignore[valid-type]
        adapter = TypeAdapter(annotated)
    else:
        adapter = TypeAdapter(info.annotation)
    return ("primitive", adapter.validate_python)


class ResourceValidator:
    """Validates resource dicts; ``validate`` returns None (valid) or the ``fhir.resources`` error."""

    def __init__(self, mode: str = SHAPE_CACHED, *, max_shapes: int = 20_000, max_leaf_cache: int = 500_000) -> None:
        if mode not in VALIDATION_MODES:
            raise ValueError(f"mode must be one of {VALIDATION_MODES}")
        self.mode = mode
        self.max_shapes = max_shapes
        self.max_leaf_cache = max_leaf_cache
        self._shapes: dict[Any, Any] = {}
        self._leaf_ok: dict[tuple[int, type, Any], bool] = {}
        self.full_validations = 0
        self.fast_accepts = 0

    def validate(self, resource: dict[str, Any]) -> Exception | None:
        model = model_class(str(resource["resourceType"]))
        if self.mode == FULL:
            return self._full(model, resource)
        leaves: list[Any] = []
        shape = shape_of(resource, leaves)
        compiled = self._shapes.get(shape)
        if compiled is None:
            error = self._full(model, resource)
            if len(self._shapes) >= self.max_shapes:
                self._shapes.clear()
            self._shapes[shape] = _ALWAYS_FULL if error is not None else (self._compile(model, resource) or _ALWAYS_FULL)
            return error
        if compiled is _ALWAYS_FULL:
            return self._full(model, resource)
        cache = self._leaf_ok
        for check, value in zip(compiled, leaves, strict=True):
            key = (id(check), type(value), value)
            ok = cache.get(key)
            if ok is None:
                ok = check(value)
                if len(cache) >= self.max_leaf_cache:
                    cache.clear()
                cache[key] = ok
            if not ok:
                return self._full(model, resource)
        self.fast_accepts += 1
        return None

    def _full(self, model: Any, resource: dict[str, Any]) -> Exception | None:
        self.full_validations += 1
        try:
            model.model_validate(resource)
        except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, fhir.resources ValueErrors
            return exc
        return None

    def _compile(self, model: type, resource: dict[str, Any]) -> list[_LeafCheck] | None:
        """Leaf checks in the order ``shape_of`` lists the leaves; None when unsupported."""
        checks: list[_LeafCheck] = []
        checks_by_field: dict[tuple[int, bool], _LeafCheck] = {}

        def leaf_check(validate: Callable[[Any], Any], in_list: bool) -> _LeafCheck:
            key = (id(validate), in_list)
            found = checks_by_field.get(key)
            if found is None:
                found = _shared_leaf_check(validate, in_list)
                checks_by_field[key] = found
            return found

        def visit(current: type, obj: dict[str, Any]) -> bool:
            for key, value in obj.items():
                if key == "resourceType":
                    continue
                kind, target = _field_plan(current, key)
                if kind == "unsupported":
                    return False
                if kind == "complex":
                    items = value if isinstance(value, list) else [value]
                    for item in items:
                        if not isinstance(item, dict) or not visit(target, item):
                            return False
                    continue
                if isinstance(value, list):
                    for item in value:
                        if isinstance(item, (dict, list)):
                            return False  # nested structure under a primitive: leave to full validation
                        checks.append(leaf_check(target, True))
                elif isinstance(value, dict):
                    return False
                else:
                    checks.append(leaf_check(target, False))
            return True

        if not visit(model, resource):
            return None
        expected: list[Any] = []
        shape_of(resource, expected)
        if len(expected) != len(checks):  # the walk and the plan disagree: never shortcut
            return None
        return checks


@lru_cache(maxsize=None)
def _shared_leaf_check(validate: Callable[[Any], Any], in_list: bool) -> _LeafCheck:
    """One check object per (field validator, list-ness), so the leaf cache is shared across shapes."""
    return _LeafCheck(validate, in_list)



# --- differential check -------------------------------------------------------
# Values that probe the primitive types: valid and invalid codes, ids, dates,
# instants, URIs, decimals, booleans, blanks and control characters.
PROBE_VALUES: tuple[Any, ...] = (
    "", " ", "x", "final", "bogus status", "two  spaces", " lead", "trail ", "line\nbreak", "tab\tin",
    "2024", "2024-03", "2024-03-05", "2024-13-45", "05/03/2024", "2024-03-05T09:30:00+08:00",
    "2024-03-05T09:30:00", "2024-03-05T25:00:00Z", "2024-03-05T09:30:00.123Z", "09:30:00",
    "urn:uuid:0f0e0d0c-0000-4000-8000-000000000001", "http://loinc.org", "has space uri", "Patient/p1",
    "a" * 65, "id-with_underscore", "ok.id-1", "MTIzNA==", "not base64!", "6.8", "1e3",
    0, 1, -1, 6.8, -0.5, 1e300, 10**20, True, False, None,
)


def mutate_resource(resource: dict[str, Any], rng: Any) -> dict[str, Any]:
    """A copy of ``resource`` with one random structural or value mutation (for differential tests)."""
    import copy

    mutated = copy.deepcopy(resource)
    paths: list[tuple[Any, Any]] = []  # (container, key) of every node below the root

    def collect(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            if key != "resourceType":
                paths.append((node, key))
            collect(child)

    collect(mutated)
    if not paths:
        return mutated
    container, key = paths[int(rng.integers(len(paths)))]
    operation = int(rng.integers(7))
    if operation <= 2:  # replace a value (mostly leaves: most paths end in leaves)
        container[key] = PROBE_VALUES[int(rng.integers(len(PROBE_VALUES)))]
    elif operation == 3 and isinstance(container, dict):  # drop an element
        del container[key]
    elif operation == 4 and isinstance(container, dict):  # an undeclared element, or a second choice type
        extra = "valueString" if str(key).startswith("value") else f"x{int(rng.integers(100))}"
        container[extra] = "probe"
    elif operation == 5:  # wrap in / unwrap from a list
        value = container[key]
        container[key] = value[0] if isinstance(value, list) and value else [value]
    else:  # a null or an empty object
        container[key] = None if rng.random() < 0.5 else {}
    return mutated


def differential_check(resources: list[dict[str, Any]], mutations: int, seed: int = 0) -> dict[str, int]:
    """Run full and shape-cached validation on ``resources`` and on mutated copies; count disagreements."""
    import numpy as np

    rng = np.random.default_rng(seed)
    fast = ResourceValidator(SHAPE_CACHED)
    full = ResourceValidator(FULL)
    counts = {"resources": 0, "rejected_by_full": 0, "false_accepts": 0, "false_rejects": 0}

    def compare(resource: dict[str, Any]) -> None:
        counts["resources"] += 1
        expected = full.validate(resource) is None
        got = fast.validate(resource) is None
        counts["rejected_by_full"] += int(not expected)
        if got and not expected:
            counts["false_accepts"] += 1
        elif expected and not got:
            counts["false_rejects"] += 1

    for resource in resources:
        compare(resource)
    for _ in range(mutations):
        compare(mutate_resource(resources[int(rng.integers(len(resources)))], rng))
    counts["fast_accepts"] = fast.fast_accepts
    return counts
