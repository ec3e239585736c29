"""The leak scan finds planted identifiers and reports where, never what."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.security.leak_scan import (
    LeakHit,
    identifier_needles,
    scan_files,
    scan_frame,
    scan_text,
)

IDENTIFIABLE_PATIENTS = pd.DataFrame(
    {
        "mrn": ["MRN0012345", "MRN0067890"],
        "resident_id": ["11010519491231002X", None],
        "name_zh": ["张三", "欧阳娜娜"],
        "name_en": ["Zhang San", "Li"],  # "Li" is too short to be a needle
        "phone": ["13812345678", "13987654321"],
        "email": ["zhangsan@example.cn", None],
        "address": ["北京市朝阳区建国路88号", None],
        "gender": ["male", "female"],  # not an identifier column
    }
)


@pytest.fixture
def needles() -> dict[str, set[str]]:
    return identifier_needles(IDENTIFIABLE_PATIENTS)


def test_needles_cover_identifier_columns_only_and_skip_short_values(needles):
    assert set(needles) == {"mrn", "resident_id", "name_zh", "name_en", "phone", "email", "address"}
    assert needles["name_zh"] == {"张三", "欧阳娜娜"}  # two-character Chinese names are kept
    assert needles["name_en"] == {"Zhang San"}
    assert needles["resident_id"] == {"11010519491231002X"}


def _values(needles: dict[str, set[str]]) -> set[str]:
    return {v for values in needles.values() for v in values}


def _assert_no_values(hits: list[LeakHit], needles: dict[str, set[str]]) -> None:
    rendered = repr(hits)
    assert not [v for v in _values(needles) if v in rendered]


def test_clean_deidentified_table_has_no_hits(needles):
    clean = pd.DataFrame(
        {"patient_pseudonym": ["p_ab12", "p_cd34"], "sex": ["male", "female"], "age_band": ["40-44", "90+"]}
    )

    assert scan_frame(clean, needles, "deidentified.patients") == []


def test_planted_identifiers_are_found_by_location_kind_and_count(needles):
    leaked = pd.DataFrame(
        {
            "patient_pseudonym": ["p_1", "p_2", "p_3"],
            "note": ["患者张三复诊", "电话13812345678，张三家属", None],
            "comment": ["see MRN0067890", "ok", "ok"],
        }
    )

    hits = scan_frame(leaked, needles, "deidentified.notes")

    assert sorted((h.location, h.identifier_kind, h.count) for h in hits) == [
        ("deidentified.notes.comment", "mrn", 1),
        ("deidentified.notes.note", "name_zh", 2),
        ("deidentified.notes.note", "phone", 1),
    ]
    _assert_no_values(hits, needles)


def test_a_phone_number_stored_as_a_number_is_still_found(needles):
    # A digits-only column read from CSV becomes int64 (float64 when some are missing).
    leaked = pd.DataFrame(
        {"patient_pseudonym": ["p_1", "p_2"], "contact": [13812345678, 13987654321], "backup": [13812345678.0, None]}
    )

    hits = scan_frame(leaked, needles, "deidentified.contacts")

    assert sorted((h.location, h.identifier_kind, h.count) for h in hits) == [
        ("deidentified.contacts.backup", "phone", 1),
        ("deidentified.contacts.contact", "phone", 2),
    ]


def test_scan_text_reports_the_location_not_the_value(needles):
    metadata = '{"rows": 12, "example": "张三 zhangsan@example.cn", "path": "/landing/h1/11010519491231002X.json"}'

    hits = scan_text(metadata, needles, "asset_metadata:deidentified/patients")

    assert sorted((h.identifier_kind, h.count) for h in hits) == [("email", 1), ("name_zh", 1), ("resident_id", 1)]
    assert {h.location for h in hits} == {"asset_metadata:deidentified/patients"}
    _assert_no_values(hits, needles)
    assert scan_text('{"rows": 12}', needles, "x") == []


def test_scan_files_finds_utf8_identifiers_in_any_file(tmp_path, needles):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "summary.html").write_text("<p>欧阳娜娜 北京市朝阳区建国路88号</p>", encoding="utf-8")
    (tmp_path / "model.bin").write_bytes(b"\x00\x01" + "13987654321".encode() + b"\xff")
    (tmp_path / "clean.csv").write_text("patient_pseudonym,age_band\np_1,40-44\n", encoding="utf-8")
    paths = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    hits = scan_files(paths, needles, tmp_path)

    assert sorted((h.location, h.identifier_kind, h.count) for h in hits) == [
        ("model.bin", "phone", 1),
        ("reports/summary.html", "address", 1),
        ("reports/summary.html", "name_zh", 1),
    ]
    _assert_no_values(hits, needles)


def test_an_all_digit_identifier_inside_a_longer_number_is_not_a_hit(tmp_path):
    from medllm_pipelines.lib.security.leak_scan import scan_files

    (tmp_path / "metrics.json").write_text('{"bytes_encrypted": 120000028, "ts": 1764.20000028}')
    (tmp_path / "log.txt").write_text("patient MRN 20000028 admitted")
    hits = scan_files(sorted(tmp_path.iterdir()), {"mrn": {"20000028"}}, tmp_path)
    assert [(h.location, h.count) for h in hits] == [("log.txt", 1)]
    assert "20000028" not in hits[0].context and "<mrn>" in hits[0].context
