"""FHIR R4B validation that rejects exactly what ``fhir.resources`` rejects, faster.

``fhir.resources`` validates every nested element through Python-level
validators (null checks, one-of-many choice types, required primitives): about
0.15 ms per Observation, 6-8k resources/s on one core, 20x slower than reading
the JSON. Those validators depend only on the *shape* of a resource - its keys,
list lengths, nesting and the JSON type of each leaf (plus ``resourceType``) -
while the *values* are checked leaf by leaf by the primitive types (``code``,
``dateTime``, ``id``, ``uri``, ``decimal`` ...), each independently of the others.

So :class:`ResourceValidator`:

1. validates the first resource of a shape in full with ``fhir.resources``;
2. if it passes, generates a *matcher* for that shape: straight-line code that
   checks a resource has exactly the exemplar's shape and, for each leaf,
   accepts a value equal to the exemplar's at that position or runs the
   pydantic validator of that element's primitive type (taken from the
   model's field), memoised per element, JSON type and value (statuses,
   systems and codes repeat);
3. a later resource its matcher passes is valid;
4. anything else - an unseen shape, a leaf that fails, a shape holding
   ``contained`` resources (the model class depends on a value) - goes to
   full ``fhir.resources`` validation, which is the arbiter and produces the
   error. A resource is therefore only ever *rejected* by full validation;
   the fast path can only accept.

The equivalence is checked by a differential test (mutated resources: same
accept/reject as full validation) in the unit tests and, larger, in
``benchmarks/bench_ingest.py``. ``mode="full"`` switches the shortcut off.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

FULL = "full"
SHAPE_CACHED = "shape_cached"
VALIDATION_MODES = (FULL, SHAPE_CACHED)

_ALWAYS_FULL = object()  # a compiled shape that cannot take the shortcut


@cache
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


@cache
def _fields_by_alias(model: type) -> dict[str, Any]:
    return {(info.alias or name): info for name, info in model.model_fields.items()}


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


@cache
def _field_plan(model: type, alias: str) -> tuple[str, Any]:
    """('complex', nested model) | ('primitive', validator of the field) | ('unsupported', None)."""
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


class _LeafCache:
    """Memoised validity of one primitive element's values of one JSON type."""

    __slots__ = ("in_list", "known", "limit", "validate")

    def __init__(self, validate: Callable[[Any], Any], in_list: bool, limit: int) -> None:
        self.known: dict[Any, bool] = {}
        self.validate = validate
        self.in_list = in_list
        self.limit = limit

    def check(self, value: Any) -> bool:
        try:
            self.validate([value] if self.in_list else value)
            ok = True
        except Exception:  # noqa: BLE001 - pydantic ValidationError and the types' ValueErrors
            ok = False
        if len(self.known) >= self.limit:
            self.known.clear()
        self.known[value] = ok
        return ok


_MISS, _FAIL, _PASS = 0, 1, 2


class _Unsupported(Exception):
    """The exemplar holds something the generated matcher does not model."""


class _MatcherBuilder:
    """Generates a function ``match(resource) -> MISS | FAIL | PASS`` for one exemplar.

    MISS: the resource does not have the exemplar's shape (keys in order, list
    lengths, nesting, JSON type of every leaf, ``resourceType``). FAIL: same
    shape, but a leaf fails its primitive type. PASS: same shape, every leaf
    valid - equal to the exemplar's value at that position, or checked (and
    memoised) with the element's own pydantic validator. The generated code is
    straight-line (no recursion); data never enters its text, only constants.
    """

    def __init__(self, caches: dict[tuple[int, bool, type], _LeafCache], cache_limit: int) -> None:
        self.lines = ["def match(r0):"]
        self.constants: dict[str, Any] = {}
        self.variables = 0
        self.caches = caches
        self.cache_limit = cache_limit

    def const(self, value: Any) -> str:
        name = f"K{len(self.constants)}"
        self.constants[name] = value
        return name

    def var(self) -> str:
        self.variables += 1
        return f"v{self.variables}"

    def emit(self, line: str) -> None:
        self.lines.append("    " + line)

    def build(self, model: type, exemplar: dict[str, Any]) -> Callable[[dict[str, Any]], int]:
        self.node(model, exemplar, "r0", top=True)
        self.emit(f"return {_PASS}")
        namespace = dict(self.constants)
        exec("\n".join(self.lines), namespace)  # noqa: S102 - generated from the model, no data in the text
        return namespace["match"]

    def node(self, model: type, obj: dict[str, Any], var: str, top: bool = False) -> None:
        self.emit(f"if type({var}) is not dict or tuple({var}) != {self.const(tuple(obj))}: return {_MISS}")
        for key, value in obj.items():
            if key == "resourceType":
                if not top:
                    raise _Unsupported
                self.emit(f"if {var}[{self.const(key)}] != {self.const(value)}: return {_MISS}")
                continue
            kind, target = _field_plan(model, key)
            if kind == "unsupported":
                raise _Unsupported
            child = self.var()
            self.emit(f"{child} = {var}[{self.const(key)}]")
            items = value if type(value) is list else None
            if items is not None:
                self.emit(f"if type({child}) is not list or len({child}) != {len(items)}: return {_MISS}")
            for index, item in enumerate(items if items is not None else [value]):
                target_var = child
                if items is not None:
                    target_var = self.var()
                    self.emit(f"{target_var} = {child}[{index}]")
                if kind == "complex":
                    if type(item) is not dict:
                        raise _Unsupported
                    self.node(target, item, target_var)
                else:
                    if type(item) in (dict, list):
                        raise _Unsupported
                    self.leaf(target, items is not None, item, target_var)

    def leaf(self, validate: Callable[[Any], Any], in_list: bool, value: Any, var: str) -> None:
        kind = type(value)
        self.emit(f"if type({var}) is not {self.const(kind)}: return {_MISS}")
        if value is None:
            return  # null-ness is shape, decided by the exemplar
        key = (id(validate), in_list, kind)
        cache = self.caches.get(key)
        if cache is None:
            cache = self.caches[key] = _LeafCache(validate, in_list, self.cache_limit)
        known, check = self.const(cache.known), self.const(cache.check)
        self.emit(f"if {var} != {self.const(value)}:")
        self.emit(f"    ok = {known}.get({var})")
        self.emit("    if ok is None:")
        self.emit(f"        ok = {check}({var})")
        self.emit("    if not ok:")
        self.emit(f"        return {_FAIL}")


class ResourceValidator:
    """Validates resource dicts; ``validate`` returns None (valid) or the ``fhir.resources`` error."""

    def __init__(
        self,
        mode: str = SHAPE_CACHED,
        *,
        max_shapes: int = 20_000,
        max_leaf_cache: int = 50_000,
        max_matchers_per_key: int = 64,
    ) -> None:
        if mode not in VALIDATION_MODES:
            raise ValueError(f"mode must be one of {VALIDATION_MODES}")
        self.mode = mode
        self.max_shapes = max_shapes
        self.max_leaf_cache = max_leaf_cache
        self.max_matchers_per_key = max_matchers_per_key
        self._shapes: dict[Any, Any] = {}  # full shape key -> matcher | _ALWAYS_FULL
        self._by_top_keys: dict[tuple[str, ...], list[Callable[[dict[str, Any]], int]]] = {}
        self._caches: dict[tuple[int, bool, type], _LeafCache] = {}
        self.full_validations = 0
        self.fast_accepts = 0

    def validate(self, resource: dict[str, Any]) -> Exception | None:
        if self.mode == FULL:
            return self._full(resource)
        for match in self._by_top_keys.get(tuple(resource), ()):
            verdict = match(resource)
            if verdict == _PASS:
                self.fast_accepts += 1
                return None
            if verdict == _FAIL:
                return self._full(resource)
        leaves: list[Any] = []
        shape = shape_of(resource, leaves)
        known = self._shapes.get(shape)
        if known is _ALWAYS_FULL:
            return self._full(resource)
        if known is not None:  # a shape whose matcher is not indexed (too many per key)
            verdict = known(resource)
            if verdict == _PASS:
                self.fast_accepts += 1
                return None
            return self._full(resource)
        error = self._full(resource)
        if error is None:  # a failed exemplar teaches nothing: the next of its shape becomes the exemplar
            self._learn(shape, resource)
        return error

    def _learn(self, shape: Any, resource: dict[str, Any]) -> None:
        if len(self._shapes) >= self.max_shapes:
            self._shapes.clear()
            self._by_top_keys.clear()
        try:
            match = _MatcherBuilder(self._caches, self.max_leaf_cache).build(
                model_class(str(resource["resourceType"])), resource
            )
        except _Unsupported:
            self._shapes[shape] = _ALWAYS_FULL
            return
        self._shapes[shape] = match
        indexed = self._by_top_keys.setdefault(tuple(resource), [])
        if len(indexed) < self.max_matchers_per_key:
            indexed.append(match)

    def _full(self, resource: dict[str, Any]) -> Exception | None:
        self.full_validations += 1
        try:
            model_class(str(resource["resourceType"])).model_validate(resource)
        except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, fhir.resources ValueErrors
            return exc
        return None


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
