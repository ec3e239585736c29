"""The self-check after de-identification: does any known identifier still occur anywhere?

Independent of the walk on purpose: it reads every string value of the
result (PN components joined too, private and binary values decoded as
UTF-8, nested sequences, the file meta), so that a gap in the profile or
the walker shows up as a residual rather than as a silent leak.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName


def _strings(ds: Dataset, path: str = "") -> Iterator[tuple[str, str]]:
    for element in ds:
        name = f"{path}{element.keyword or element.tag}"
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _strings(item, f"{name}[{index}].")
        elif element.tag == 0x7FE00010:
            continue
        elif isinstance(element.value, bytes):
            yield name, element.value.decode("utf-8", "replace")
        elif isinstance(element.value, (list, MultiValue)):
            yield name, "\\".join(str(v) for v in element.value)
        elif isinstance(element.value, PersonName):
            yield name, str(element.value)
            yield name, str(element.value).replace("^", "").replace("=", "")
        elif element.value is not None:
            yield name, str(element.value)


def residual_identifiers(ds: Dataset, needles: Iterable[str]) -> list[str]:
    """Attributes (paths) where any needle still occurs: the de-identification self-check.

    Looks at every string value (PN components joined too), private and
    binary values decoded as UTF-8, nested sequences and the file meta.
    Returns attribute paths only, never the values.
    """
    wanted = [n for n in {str(n) for n in needles} if n]
    hits: list[str] = []
    sources = list(_strings(ds))
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        sources += list(_strings(meta, "file_meta."))
    for name, text in sources:
        if any(needle in text for needle in wanted):
            hits.append(name)
    return sorted(set(hits))
