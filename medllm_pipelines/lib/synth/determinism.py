"""Seeded randomness and stable identifiers for the synthetic hospital.

Every random draw comes from a named stream derived from the user's seed, so a
change in one part of the generator (say, dialogues) does not shift the values
of another (say, lab results), and the same arguments give byte-identical
files. Nothing here reads the clock, ``uuid4`` or the process hash seed.
"""

from __future__ import annotations

import uuid
import zlib

import numpy as np

# Namespace for name-based (uuid5) identifiers; a fixed, arbitrary UUID.
_UID_NAMESPACE = uuid.UUID("5b0f6f1e-7c3a-5d1e-9a57-2f7d4c1be001")


def stream(seed: int, *labels: str | int) -> np.random.Generator:
    """An independent generator for one purpose, e.g. ``stream(seed, "fhir", "hzsf")``."""
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    key = zlib.crc32("/".join(str(label) for label in labels).encode("utf-8"))
    return np.random.default_rng([int(seed), key])


def random_uuid(rng: np.random.Generator) -> str:
    """A version-4 shaped UUID whose bits come from ``rng`` (so it is reproducible)."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def derived_uid(*parts: str | int) -> str:
    """A DICOM UID under the 2.25 (UUID-derived) root, fixed by its parts.

    ``pydicom.uid.generate_uid(prefix=None, ...)`` ignores its entropy sources
    and calls ``uuid4``; a name-based uuid5 keeps the UID reproducible.
    """
    name = "/".join(str(part) for part in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def child_seed(rng: np.random.Generator) -> int:
    """A plain int seed for libraries with their own RNG (Faker, ``random``)."""
    return int(rng.integers(0, 2**31 - 1))
