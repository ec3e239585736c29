"""The de-identified images of a whole lifecycle run: DICOM files per PS3.15 Annex E, nothing identifying left.

Raw and de-identified files are paired by their pixel data (unchanged by
de-identification), so no key is needed to check what the keys did.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest

from medllm_pipelines.defs import keys
from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.deidentify.dicom import load_profile, residual_identifiers
from medllm_pipelines.lib.security.home_scan import load_identity_needles
from medllm_pipelines.lib.security.leak_scan import scan_files, scan_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(embedded_run) -> dict[str, Any]:
    meta = embedded_run.materialization(keys.DEID_IMAGES)
    warehouse = Warehouse(embedded_run.settings.warehouse_url)
    try:
        table = warehouse.read_table(*keys.DEID_IMAGES.path)
        quarantine = warehouse.read_table(keys.AUDIT_SCHEMA, keys.QUARANTINE_TABLE)
    finally:
        warehouse.dispose()
    folder = Path(meta["images_dir"])
    released = {row.image_id: pydicom.dcmread(folder / row.dicom_file) for row in table.itertuples()}
    return {"meta": meta, "table": table, "folder": folder, "released": released,
            "quarantine": quarantine[quarantine["asset"] == "/".join(keys.DEID_IMAGES.path)]}


@pytest.fixture(scope="module")
def raw_by_pixels(embedded_run) -> dict[bytes, pydicom.Dataset]:
    """The hospital's delivered files (truncated ones left out), by the hash of their pixel data."""
    found: dict[bytes, list[pydicom.Dataset]] = defaultdict(list)
    for path in sorted(embedded_run.hospital.root.glob("*/dicom/*/*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.PixelData
        except Exception:  # noqa: BLE001, S112 - a truncated file never reaches the de-identified set
            continue
        found[hashlib.sha256(pixels).digest()].append(ds)
    return {digest: datasets[0] for digest, datasets in found.items() if len(datasets) == 1}


def _pairs(images: dict[str, Any], raw_by_pixels: dict[bytes, pydicom.Dataset]) -> list[tuple[pydicom.Dataset, Any]]:
    pairs = []
    for result in images["released"].values():
        raw = raw_by_pixels.get(hashlib.sha256(result.PixelData).digest())
        if raw is not None:
            pairs.append((raw, result))
    assert len(pairs) >= 0.9 * len(images["released"]), "pixel data pair raw and de-identified files"
    return pairs


def _identity_rows(embedded_run) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in embedded_run.hospital.identities.read_text("utf-8").splitlines() if line]
    return {row["mrn"]: row for row in rows}


def _identity_needles(row: dict[str, Any]) -> set[str]:
    """Every form one person's identity takes in a header: PN component groups, compact birth date."""
    needles = {row[k] for k in ("mrn", "resident_id", "phone", "email", "address", "name_en") if row.get(k)}
    needles.add(row["birth_date"].replace("-", ""))
    needles.update(row.get("accession_numbers") or [])
    given_en, family_en = row["name_en"].split(" ", 1)
    needles.add(f"{family_en}^{given_en}")
    if row.get("name_zh"):
        needles.update({row["name_zh"], f"{row['name_zh'][0]}^{row['name_zh'][1:]}"})
    return needles


def test_images_are_released_as_deidentified_dicom_and_pixel_arrays(images) -> None:
    meta, table, folder = images["meta"], images["table"], images["folder"]
    assert len(table) > 20 and meta["files_written"] == len(table)
    assert {"image_id", "patient_pseudonym", "modality", "dicom_file", "pixel_file"} <= set(table.columns)
    for row in table.itertuples():
        # file names are image pseudonyms: no identifier, no raw UID in a path
        assert row.dicom_file == f"{row.image_id}.dcm" and row.pixel_file == f"{row.image_id}.npy"
        assert (folder / row.pixel_file).is_file()
    profile = load_profile()
    for result in images["released"].values():
        assert result.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in result.DeidentificationMethodCodeSequence}
        assert {"113100", "113107", "113105"} <= codes
        assert profile.version in result.DeidentificationMethod
        assert not any(element.tag.is_private and element.tag.element > 0xFF for element in result)


def test_no_raw_identity_survives_in_any_element_or_byte(embedded_run, images, raw_by_pixels) -> None:
    identities = _identity_rows(embedded_run)
    for raw, result in _pairs(images, raw_by_pixels):
        row = identities[str(raw.PatientID)]
        assert residual_identifiers(result, _identity_needles(row)) == []
        assert str(result.PatientID) == str(result.PatientName) != str(raw.PatientID)
    # byte level, every person's identifiers against every written file (DICOM and .npy)
    needles = load_identity_needles(embedded_run.hospital.identities)
    hits = scan_files(sorted(images["folder"].iterdir()), needles, images["folder"])
    assert hits == [], [(h.location, h.identifier_kind) for h in hits]


def test_uids_are_remapped_consistently_within_a_study(images, raw_by_pixels) -> None:
    new_by_raw: dict[str, set[str]] = defaultdict(set)
    for raw, result in _pairs(images, raw_by_pixels):
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            assert str(result.get(keyword)) != str(raw.get(keyword)), keyword
            assert str(result.get(keyword)).startswith("2.25.")
        assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
        new_by_raw[str(raw.StudyInstanceUID)].add(str(result.StudyInstanceUID))
    assert any(len(group) > 1 for group in _studies_with_several_files(images, raw_by_pixels))
    assert all(len(new) == 1 for new in new_by_raw.values()), "one raw study, one new StudyInstanceUID"
    assert len({next(iter(new)) for new in new_by_raw.values()}) == len(new_by_raw), "studies stay apart"


def _studies_with_several_files(images, raw_by_pixels) -> list[list[Any]]:
    by_study: dict[str, list[Any]] = defaultdict(list)
    for raw, result in _pairs(images, raw_by_pixels):
        by_study[str(raw.StudyInstanceUID)].append(result)
    return list(by_study.values())


def _day(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def test_dates_are_shifted_by_one_offset_per_patient(images, raw_by_pixels) -> None:
    shifts: dict[str, set[int]] = defaultdict(set)
    for raw, result in _pairs(images, raw_by_pixels):
        for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
            shifts[str(result.PatientID)].add((_day(result.get(keyword)) - _day(raw.get(keyword))).days)
        assert result.StudyTime == raw.StudyTime  # times kept (Retain Longitudinal Temporal, modified dates)
        assert not result.get("PatientBirthDate")
    assert all(len(days) == 1 for days in shifts.values()), "one offset per patient"
    offsets = [next(iter(days)) for days in shifts.values()]
    assert 0 not in offsets and all(abs(d) <= 365 for d in offsets)
    assert len(set(offsets)) > len(offsets) // 2, "offsets differ between patients"


def test_withheld_images_are_quarantined_with_a_reason_and_counts_reconcile(images) -> None:
    meta, quarantine = images["meta"], images["quarantine"]
    assert meta["records_in"] == meta["records_out"] + meta["records_quarantined"] + meta["removed[unlinked_person]"]
    assert meta["reconciled"] is True
    assert meta["records_out"] == len(images["table"]) == meta["files_written"]
    assert len(quarantine) == meta["records_quarantined"]
    assert meta["withheld_by_reason"] == {str(k): int(v) for k, v in quarantine["reason_code"].value_counts().items()}
    assert (quarantine["reason"].str.len() > 20).all() and quarantine["source_object"].notna().all()
    assert set(quarantine["reason_code"]) <= {"burned_in_annotation", "burned_in_annotation_unknown",
                                              "residual_identifier", "deidentification_failed",
                                              "patient_identity_removed_missing"}
    assert "residual_identifier" not in set(quarantine["reason_code"]), "the profile leaves nothing to find"
    # every image whose header says burned-in text is held back, none is released
    burned = meta["burned_in_annotation"].get("YES", 0)
    assert burned >= 1, "the planted burned-in copy (conftest_lifecycle.plant_burned_in_copy) reached this stage"
    assert meta["withheld_by_reason"].get("burned_in_annotation", 0) == burned


def test_metadata_reports_the_profile_and_what_it_did_without_identifiers(embedded_run, images) -> None:
    meta = images["meta"]
    profile = load_profile()
    assert meta["dicom_profile_version"] == profile.version
    assert meta["dicom_profile"] == "Basic Application Confidentiality Profile" and "PS3.15" in meta["dicom_profile_standard"]
    assert meta["dicom_profile_options"] == list(profile.options)
    files = meta["files_written"]
    assert meta["uids_remapped"] >= 4 * files and meta["dates_shifted"] >= 3 * files
    assert meta["attributes_removed"] > 0 and meta["attributes_replaced"] >= 2 * files
    assert meta["private_tags_removed"] >= 2 * files and meta["private_tags_retained"] == 0
    assert meta["patient_identity_removed_checked"] is True
    text = json.dumps({k: str(v) for k, v in meta.items()}, ensure_ascii=False)
    assert scan_text(text, load_identity_needles(embedded_run.hospital.identities), "metadata") == []


def test_leak_gate_on_deidentified_images_passed(embedded_run) -> None:
    gates = [e for e in embedded_run.check_evaluations()
             if e.asset_key == keys.DEID_IMAGES and e.check_name == keys.CHECK_NO_IDENTIFIERS]
    assert len(gates) == 1 and gates[0].passed
