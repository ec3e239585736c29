"""Identifiers are where de-identification must find them, and nowhere in the truth files."""

from __future__ import annotations

import base64
from pathlib import Path

from medllm_pipelines.lib.synth import DefectRates, generate_hospital
from medllm_pipelines_tests.lib.synth.conftest import Hospital

DIRECT_IDENTIFIER_FIELDS = ("mrn", "name_zh", "name_en", "resident_id", "phone", "email", "address")


def _identifier_values(hospital: Hospital) -> set[str]:
    values: set[str] = set()
    for row in hospital.identities:
        values.update(str(row[field]) for field in DIRECT_IDENTIFIER_FIELDS if row[field])
        values.add(row["birth_date"])
        values.update(row["accession_numbers"])
    return values


def test_identities_file_is_written_only_when_asked(tmp_path: Path, default_hospital: Hospital) -> None:
    assert not (default_hospital.root / "_truth" / "identities.jsonl").exists()
    assert default_hospital.manifest.truth_files["identities"] is None
    manifest = generate_hospital(tmp_path, patients=10, seed=1, defect_rates=DefectRates.none(), write_identities=True)
    rows = (tmp_path / "_truth" / "identities.jsonl").read_text("utf-8").splitlines()
    assert len(rows) == manifest.patient_records


def test_truth_files_and_file_names_contain_no_identifier(defective_hospital: Hospital) -> None:
    values = _identifier_values(defective_hospital)
    assert len(values) > 100
    for relpath in ("_truth/manifest.json", "_truth/patients.jsonl", "_truth/images.jsonl"):
        text = (defective_hospital.root / relpath).read_text("utf-8")
        leaked = [value for value in values if value in text]
        assert not leaked, (relpath, leaked[:3])
    names = "\n".join(p.relative_to(defective_hospital.root).as_posix() for p in defective_hospital.root.rglob("*"))
    assert not [value for value in values if value in names]


def test_every_note_embeds_the_patients_name_phone_and_an_id(clean_hospital: Hospital) -> None:
    identities = {row["mrn"]: row for row in clean_hospital.identities}
    mrn_of_patient = {}
    notes = []
    for institution in ("hzsf", "rvic", "jhsq"):
        for _, _, resource in clean_hospital.readable_resources(institution):
            if resource["resourceType"] == "Patient":
                mrn = next(i["value"] for i in resource["identifier"] if i["type"]["coding"][0]["code"] == "MR")
                mrn_of_patient[resource["id"]] = mrn
            elif resource["resourceType"] == "DocumentReference":
                notes.append(resource)
    assert notes
    with_address = 0
    for note in notes:
        patient = note["subject"]["reference"].rsplit("/", 1)[-1].removeprefix("urn:uuid:")
        who = identities[mrn_of_patient[patient]]
        text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode("utf-8")
        assert (who["name_zh"] or "") in text or who["name_en"] in text
        assert who["phone"] in text
        assert who["mrn"] in text or (who["resident_id"] and who["resident_id"] in text)
        with_address += who["address"] in text
    assert 0 < with_address < len(notes)
