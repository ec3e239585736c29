"""Deliver a folder of files written elsewhere (a sender's export, a public test corpus) as a landing zone.

A hospital's interface engine writes into ``<landing>/<institution>/<feed>/``;
files published by other projects come in folders of their own, named
however their authors liked. :func:`stage_corpus` lays such a folder out as
deliveries: each top-level sub-folder becomes one source institution (its
name made into a source code), each file goes to the feed folder its
*content* says it belongs to (FHIR Bundle or resource JSON, Bulk NDJSON and
its export manifest, HL7 v2, DICOM Part 10 and DICOMDIR), keeping its path
below the folder so that DICOMDIR references and export manifests still
resolve. A file whose content is none of these is delivered as it is (under
``other/``) so that intake quarantines it with a reason, as it would any
stray file: nothing is dropped on the way in. The source registry the
delivery needs is written beside it (``MEDLLM_SOURCES_FILE``).

Used by the conformance test suite on ``../shared/conformance/`` and by
``medllm conformance stage`` for any other folder of public data.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medllm_pipelines.lib.ingest.landing import DICOM, FHIR_BUNDLE, FHIR_NDJSON, HL7V2, UNSUPPORTED, classify

# the feed folder a kind of content is delivered into (landing.classify reads it back)
FEED_FOLDER = {FHIR_BUNDLE: "fhir/bundles", FHIR_NDJSON: "fhir/bulk", HL7V2: "hl7", DICOM: "dicom", UNSUPPORTED: "other"}
_SNIFF_BYTES = 4096
_SKIPPED_NAMES = {"readme.md", "readme.txt", "readme", "license", "license.txt", ".gitattributes"}
_CODE_CHARS = re.compile(r"[^a-z0-9_-]+")


def sniff_kind(head: bytes, name: str) -> str:
    """The feed a file belongs to, from its first bytes (the extension only breaks ties)."""
    body = head.removeprefix(b"\xef\xbb\xbf").lstrip(b"\x0b \t\r\n")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if body[:3] in (b"MSH", b"FHS", b"BHS"):
        return HL7V2
    if body.startswith(b"{"):
        first_line = body.split(b"\n", 1)[0].strip()
        # NDJSON: the first line is a complete JSON object and another object follows it
        if name.lower().endswith(".ndjson") or (first_line.endswith(b"}") and b"\n{" in body):
            return FHIR_NDJSON
        return FHIR_BUNDLE
    if name.lower().endswith((".dcm", ".dicom")) or Path(name).name.upper() == "DICOMDIR":
        return DICOM  # a DICOM file without preamble: the DICOM reader says what is wrong with it
    return UNSUPPORTED


def source_code(folder_name: str) -> str:
    """A registry code (``[a-z0-9][a-z0-9_-]{1,31}``) from a folder name."""
    code = _CODE_CHARS.sub("-", folder_name.lower()).strip("-_")[:32].strip("-_")
    if len(code) < 2:
        code = f"src-{code or 'x'}"
    return code


@dataclass
class StagedCorpus:
    landing: Path
    sources_file: Path
    # landing relpath -> corpus relpath, for every file delivered
    delivered: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def by_source_and_kind(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {}
        for relpath in self.delivered:
            counts.setdefault(relpath.split("/", 1)[0], Counter())[classify(relpath)] += 1
        return {code: dict(sorted(c.items())) for code, c in sorted(counts.items())}

    def landing_path_of(self, corpus_relpath: str) -> str:
        for landing_relpath, source in self.delivered.items():
            if source == corpus_relpath:
                return landing_relpath
        raise KeyError(corpus_relpath)


def stage_corpus(
    corpus: Path,
    landing: Path,
    *,
    sources_file: Path | None = None,
    folders: tuple[str, ...] | None = None,
    version: str = "corpus-1",
) -> StagedCorpus:
    """Copy ``corpus`` (only its top-level ``folders``, when given) into ``landing`` as deliveries
    and write the source registry they need.

    README and licence files at any level are not deliveries and are skipped
    (listed in ``skipped``). Hidden files and ``_``-prefixed paths are
    skipped as the landing zone itself would ignore them.
    """
    corpus, landing = Path(corpus), Path(landing)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus folder {corpus} does not exist")
    sources_file = sources_file or landing.parent / f"{landing.name}-sources.yaml"
    staged = StagedCorpus(landing, sources_file)
    codes: dict[str, str] = {}
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        relative = path.relative_to(corpus)
        parts = relative.parts
        if any(part.startswith((".", "_")) for part in parts) or path.name.lower() in _SKIPPED_NAMES:
            staged.skipped.append(relative.as_posix())
            continue
        folder = parts[0] if len(parts) > 1 else "corpus"
        if folders is not None and folder not in folders:
            continue
        code = codes.setdefault(folder, _unique(source_code(folder), set(codes.values())))
        inner = Path(*parts[1:]) if len(parts) > 1 else relative
        with path.open("rb") as handle:
            kind = sniff_kind(handle.read(_SNIFF_BYTES), path.name)
        name = inner.as_posix()
        if kind == FHIR_NDJSON and not name.lower().endswith(".ndjson"):
            name += ".ndjson"
        elif kind == FHIR_BUNDLE and not name.lower().endswith(".json"):
            name += ".json"
        elif kind == HL7V2 and not name.lower().endswith(".hl7"):
            name += ".hl7"
        target_relpath = f"{code}/{FEED_FOLDER[kind]}/{name}"
        target = landing / target_relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        staged.delivered[target_relpath] = relative.as_posix()
    registry = {
        "version": version,
        "sources": [
            {"code": code, "name": f"corpus folder {folder}", "feeds": sorted({classify(r) for r in staged.delivered if r.startswith(code + "/")})}
            for folder, code in sorted(codes.items(), key=lambda item: item[1])
        ],
    }
    sources_file.parent.mkdir(parents=True, exist_ok=True)
    sources_file.write_text(yaml.safe_dump(registry, allow_unicode=True, sort_keys=False))
    return staged


def _unique(code: str, taken: set[str]) -> str:
    candidate, n = code, 2
    while candidate in taken or candidate == "unrouted":
        candidate = f"{code[:29]}-{n}"
        n += 1
    return candidate
