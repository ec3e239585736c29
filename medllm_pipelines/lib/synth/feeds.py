"""Writing one institution's FHIR feed in its transport format.

* ``transaction_bundles``: one transaction Bundle per patient (``PUT`` for the
  Patient, ``POST`` for the rest), pretty-printed, as an integration engine
  posts them;
* ``collection_bundles``: compact collection Bundles of ``patients_per_bundle``
  patients each, as a nightly batch;
* ``bulk_ndjson``: FHIR Bulk Data export, one file per resource type.

In Bundles every reference is ``urn:uuid:<id>`` and the fullUrl of each entry
is ``urn:uuid:<its resource id>``, so references also resolve across files
(a duplicate re-sent in another Bundle still points at its patient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from medllm_pipelines.lib.synth.defects import (
    MALFORMED_FILE,
    NON_FHIR_JSON,
    TRUNCATED_FILE,
    Defect,
    DefectRates,
    Item,
    RecordDefects,
    choose_file_defect,
    malformed_json,
    non_fhir_document,
    non_fhir_line,
    truncate_text,
)
from medllm_pipelines.lib.synth.determinism import random_uuid
from medllm_pipelines.lib.synth.files import OutputTree, json_bytes
from medllm_pipelines.lib.synth.institutions import BULK_NDJSON, TRANSACTION_BUNDLES, Institution

Resource = dict[str, Any]

NDJSON_TYPES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "DocumentReference",
                "Consent")


@dataclass
class FeedOutput:
    """What was written for one institution's FHIR feed."""

    files: list[str] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    resource_counts: dict[str, int] = field(default_factory=dict)
    non_fhir_objects: int = 0

    def count(self, item: Item) -> None:
        if item.resource_type is not None:
            self.resource_counts[item.resource_type] = self.resource_counts.get(item.resource_type, 0) + 1


def bundle_folder(institution: Institution) -> str:
    return f"{institution.code}/fhir/bundles"


def bulk_folder(institution: Institution) -> str:
    return f"{institution.code}/fhir/bulk"


def write_fhir_feed(tree: OutputTree, institution: Institution, records: list[list[Resource]], rates: DefectRates,
                    defect_rng: np.random.Generator, id_rng: np.random.Generator) -> FeedOutput:
    """Write ``records`` (one resource list per patient) with seeded defects."""
    if institution.fhir_format == BULK_NDJSON:
        return _write_bulk(tree, institution, records, rates, defect_rng)
    return _write_bundles(tree, institution, records, rates, defect_rng, id_rng)


def _entry(item: Item, transaction: bool) -> dict[str, Any]:
    resource = item.resource
    assert resource is not None
    entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}
    if transaction:
        rtype = resource["resourceType"]
        if rtype == "Patient":
            entry["request"] = {"method": "PUT", "url": f"Patient/{resource['id']}"}
        else:
            entry["request"] = {"method": "POST", "url": rtype}
    return entry


def _write_bundles(tree: OutputTree, institution: Institution, records: list[list[Resource]], rates: DefectRates,
                   rng: np.random.Generator, id_rng: np.random.Generator) -> FeedOutput:
    output = FeedOutput()
    transaction = institution.fhir_format == TRANSACTION_BUNDLES
    size = max(1, institution.patients_per_bundle)
    groups = [records[start:start + size] for start in range(0, len(records), size)]
    file_defects = [choose_file_defect(rates, rng) for _ in groups]
    applier = RecordDefects(institution, rates, rng)

    group_items: list[list[Item]] = []
    duplicates: list[tuple[int, Item]] = []
    for number, group in enumerate(groups):
        items: list[Item] = []
        for resources in group:
            if file_defects[number] is None:
                record_items, copies = applier.apply(resources)
                duplicates.extend((number, copy) for copy in copies)
            else:  # the whole file will be unreadable: no record defect would be observable
                record_items = [Item(resource) for resource in resources]
            items.extend(record_items)
        group_items.append(items)
    readable = [number for number, defect in enumerate(file_defects) if defect is None]
    for source, copy in duplicates:
        targets = [n for n in readable if n > source] or [n for n in readable if n != source] or [source]
        group_items[targets[0]].append(copy)

    folder = bundle_folder(institution)
    file_number = 0
    for number, items in enumerate(group_items):
        file_number += 1
        relpath = f"{folder}/bundle-{file_number:05d}.json"
        bundle = {
            "resourceType": "Bundle",
            "id": random_uuid(id_rng),
            "meta": {"source": institution.source_uri},
            "type": "transaction" if transaction else "collection",
            "entry": [_entry(item, transaction) for item in items],
        }
        text = json_bytes(bundle, pretty=transaction).decode("utf-8")
        defect = file_defects[number]
        if defect == MALFORMED_FILE:
            text = malformed_json(text, rng)
        elif defect == TRUNCATED_FILE:
            text = truncate_text(text, rng)
        tree.write(relpath, text.encode("utf-8"))
        output.files.append(relpath)
        for item in items:
            output.count(item)
        if defect is not None:
            output.defects.append(Defect(defect, institution.code, relpath, None, None, None))
        else:
            for position, item in enumerate(items):
                for defect_type in item.defects:
                    output.defects.append(Defect(defect_type, institution.code, relpath, position,
                                                 item.resource_type, item.resource_id))
        if rates.non_fhir_json > 0 and rng.random() < rates.non_fhir_json:
            file_number += 1
            stray = f"{folder}/bundle-{file_number:05d}.json"
            tree.write(stray, json_bytes(non_fhir_document(rng), pretty=transaction))
            output.files.append(stray)
            output.non_fhir_objects += 1
            output.defects.append(Defect(NON_FHIR_JSON, institution.code, stray, None, None, None))
    return output


def _write_bulk(tree: OutputTree, institution: Institution, records: list[list[Resource]], rates: DefectRates,
                rng: np.random.Generator) -> FeedOutput:
    output = FeedOutput()
    applier = RecordDefects(institution, rates, rng)
    per_type: dict[str, list[Item]] = {rtype: [] for rtype in NDJSON_TYPES}
    copies: list[Item] = []
    for resources in records:
        items, duplicates = applier.apply(resources)
        for item in items:
            per_type[item.resource_type or ""].append(item)
        copies.extend(duplicates)
    for copy in copies:  # a retried export page: the same resource on a later line
        per_type[copy.resource_type or ""].append(copy)

    for rtype in NDJSON_TYPES:
        lines = per_type[rtype]
        if not lines:
            continue
        relpath = f"{bulk_folder(institution)}/{rtype}.ndjson"
        if rates.malformed_file > 0 and rng.random() < rates.malformed_file:
            clean = [item for item in lines if item.clean]
            if clean:
                item = clean[int(rng.integers(len(clean)))]
                item.raw = malformed_json(orjson.dumps(item.resource).decode("utf-8"), rng).encode("utf-8") + b"\n"
                item.defects.append(MALFORMED_FILE)
        truncated = False
        if rates.truncated_file > 0 and rng.random() < rates.truncated_file:
            clean = [item for item in lines if item.clean]
            if clean:
                item = clean[-1]
                lines.remove(item)
                lines.append(item)
                item.raw = truncate_text(orjson.dumps(item.resource).decode("utf-8"), rng).encode("utf-8")
                item.defects.append(TRUNCATED_FILE)
                truncated = True
        if rates.non_fhir_json > 0 and rng.random() < rates.non_fhir_json:
            last_allowed = len(lines) - 1 if truncated else len(lines)
            at = int(rng.integers(0, last_allowed + 1))
            lines.insert(at, Item(None, [NON_FHIR_JSON], raw=non_fhir_line(rng) + b"\n"))
            output.non_fhir_objects += 1
        payload = b"".join(item.raw if item.raw is not None else orjson.dumps(item.resource) + b"\n"
                           for item in lines)
        tree.write(relpath, payload)
        output.files.append(relpath)
        for position, item in enumerate(lines):
            output.count(item)
            for defect_type in item.defects:
                output.defects.append(Defect(defect_type, institution.code, relpath, position,
                                             item.resource_type, item.resource_id))
    return output
