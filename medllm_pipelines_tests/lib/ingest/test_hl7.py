"""HL7 v2 ADT/ORU messages -> the FHIR parser's rows; the specification's example messages;
framing; dates; and bad messages quarantined with a specific reason and no values."""

from __future__ import annotations

from pathlib import Path

import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.fhir import ParsedFhir, table_columns
from medllm_pipelines.lib.ingest.hl7 import (
    Rejected,
    hl7_datetime,
    parse_hl7_object,
    split_hl7_messages,
)

FIXTURES = Path(__file__).with_name("fixtures")
SOURCE = "c" * 64

NAME_FAMILY, NAME_GIVEN = "欧阳", "娜娜"
RESIDENT_ID = "11010519491231002X"
MRN = "WS0300123"
PHONE = "13812345678"
SENSITIVE = (NAME_FAMILY, NAME_GIVEN, RESIDENT_ID, MRN, PHONE, "19491231")

MSH_ADT = "MSH|^~\\&|HIS|WHSY|MEDLLM|MEDLLM|{ts}||ADT^{event}^ADT_A01|{ctrl}|P|2.5|||AL|NE|CHN|UNICODE UTF-8"
PID = (f"PID|1||{MRN}^^^WHSY^MR~{RESIDENT_ID}^^^CHN&2.16.156.10011.1.5&ISO^NNCHN||"
       f"{NAME_FAMILY}^{NAME_GIVEN}^^^^^L~Ouyang^Nana^^^^^A||{{dob}}|F|||建国路88号^^北京市^北京市^^CN^H^^朝阳区||"
       f"^PRN^CP^^^^^^^^^{PHONE}~^NET^Internet^nana@example.com")
PV1 = "PV1|1|{cls}|||||||||||||||||V0001^^^WHSY^VN|||||||||||||||||||||||||{start}|{end}"


def adt(event: str = "A01", ctrl: str = "C1", ts: str = "20240305090000+0800", dob: str = "19491231",
        end: str = "", extra: tuple[str, ...] = ()) -> list[str]:
    return [MSH_ADT.format(ts=ts, event=event, ctrl=ctrl), f"EVN|{event}|{ts}", PID.format(dob=dob),
            PV1.format(cls="I" if event == "A01" else "O", start="20240305090000+0800", end=end),
            "OBX|1|NM|39156-5^BMI^LN||24.2|kg/m2^kg/m2^UCUM|||||F|||20240305091000+0800",
            "DG1|1||E11.9^2型糖尿病^I10||20240305092000+0800|F", *extra]


def oru(ctrl: str = "C9", obx_time: str = "20240305093000+0800", value: str = "6.8") -> list[str]:
    return ["MSH|^~\\&|LIS|WHSY|MEDLLM|MEDLLM|20240305110000+0800||ORU^R01^ORU_R01|" + ctrl + "|P|2.5",
            PID.format(dob="19491231"),
            "OBR|1|ORD1^HIS|FIL1^LIS|LAB^生化^L|||20240305090000+0800",
            f"OBX|1|NM|4548-4^HbA1c^LN||{value}|%^%^UCUM|4.0-6.0|H|||F|||{obx_time}",
            "OBX|2|NM|GLU^空腹血糖^L||6.1|mmol/L^mmol/L^UCUM|||||F|||20240305093000+0800"]


def mllp(*messages: list[str]) -> bytes:
    return b"".join(b"\x0b" + "\r".join(m).encode("utf-8") + b"\r\x1c\r" for m in messages)


def parse(content: bytes) -> ParsedFhir:
    result = parse_hl7_object(content, institution="whsy", source_object=SOURCE, asset="ingest/hl7")
    result.reconciliation()  # every row, quarantined message and out-of-scope message accounted for
    return result


def reasons(result: ParsedFhir) -> list[tuple[int | None, str]]:
    return [(q.position, q.reason_code) for q in result.quarantine]


# --- the specification's examples ------------------------------------------------
def test_the_classic_adt_a01_example():
    result = parse((FIXTURES / "hl7v25_ch2_adt_a01.hl7").read_bytes())

    assert result.quarantine == []
    (patient,) = result.rows["patients"]
    assert {k: patient[k] for k in ("mrn", "name_en", "gender", "birth_date", "phone", "address")} == {
        "mrn": "PATID1234", "name_en": "ADAM EVERYMAN", "gender": "male", "birth_date": "1961-06-15",
        "phone": "(555) 555-2004", "address": "2222 HOME STREET, GREENSBORO, NC 27401-1020",
    }
    (encounter,) = result.rows["encounters"]
    assert (encounter["encounter_class"], encounter["status"], encounter["patient_key"]) == (
        "IMP", "in-progress", patient["resource_key"])
    assert (patient["version_id"], patient["source_position"]) == ("19880818112600", 0)


def test_the_classic_oru_r01_example():
    result = parse((FIXTURES / "hl7v25_ch7_oru_r01.hl7").read_bytes())

    assert result.quarantine == []
    (patient,) = result.rows["patients"]
    (glucose,) = result.rows["observations"]
    assert (patient["name_en"], patient["birth_date"], patient["gender"]) == ("EVE EVERYWOMAN", "1962-03-20", "female")
    # OBX-3 names no coding system (its 3rd component is text), so the code is not claimed to be LOINC.
    assert {k: glucose[k] for k in ("code", "code_system", "value", "unit", "status", "effective", "category")} == {
        "code": "1554-5", "code_system": None, "value": 182.0, "unit": "mg/dl", "status": "final",
        "effective": "2002-02-15T07:30:00", "category": "laboratory",
    }


def test_a_widely_copied_variant_of_the_oru_example_has_a_nine_digit_birth_date():
    text = (FIXTURES / "hl7v25_ch7_oru_r01.hl7").read_bytes().replace(b"|19620320|", b"|196203520|")

    result = parse(text)

    assert [(q.position, q.reason_code, q.reason) for q in result.quarantine] == [
        (0, "unparseable_date", "PID-7 (date/time of birth) is not an HL7 date/time")
    ]


# --- mapping ---------------------------------------------------------------------
def test_rows_have_the_fhir_parsers_columns():
    result = parse(mllp(adt(), oru()))

    for table in ("patients", "encounters", "observations", "conditions"):
        assert result.rows[table], table
        for row in result.rows[table]:
            assert set(row) == set(table_columns(table)), table


def test_identifiers_names_codes_and_units_are_mapped():
    result = parse(mllp(adt(), oru()))

    patient = result.rows["patients"][0]
    assert {k: patient[k] for k in ("mrn", "resident_id", "name_zh", "name_en", "phone", "email", "address")} == {
        "mrn": MRN, "resident_id": RESIDENT_ID, "name_zh": NAME_FAMILY + NAME_GIVEN, "name_en": "Nana Ouyang",
        "phone": PHONE, "email": "nana@example.com", "address": "北京市朝阳区建国路88号",
    }
    assert patient["resource_key"].startswith("hl7-") and MRN not in patient["resource_key"]
    by_code = {o["code"]: o for o in result.rows["observations"]}
    assert (by_code["4548-4"]["code_system"], by_code["4548-4"]["unit_system"]) == (codes.LOINC, codes.UCUM)
    assert by_code["GLU"]["code_system"] == codes.local_lab_system("whsy")
    assert by_code["39156-5"]["category"] == "vital-signs" and by_code["4548-4"]["category"] == "laboratory"
    assert by_code["4548-4"]["effective"] == "2024-03-05T09:30:00+08:00"
    (condition,) = result.rows["conditions"]
    assert (condition["code_system"], condition["code"], condition["recorded_date"]) == (
        codes.ICD10_WHO, "E11.9", "2024-03-05T09:20:00+08:00")
    assert {r["patient_key"] for t in result.rows.values() for r in t if "patient_key" in r} == {patient["resource_key"]}


def test_an_a08_update_keeps_the_keys_and_carries_a_newer_version():
    admitted = adt("A01", "C1", ts="20240305090000+0800")
    discharged = adt("A08", "C2", ts="20240312100000+0800", end="20240312100000+0800")

    result = parse(mllp(admitted, discharged))

    first, second = result.rows["encounters"]
    assert first["resource_key"] == second["resource_key"]
    assert (first["status"], second["status"], second["end"]) == ("in-progress", "finished", "2024-03-12T10:00:00+08:00")
    assert int(second["version_id"]) > int(first["version_id"])
    assert first["content_hash"] != second["content_hash"]


def test_a_resent_message_gives_identical_rows():
    result = parse(mllp(adt(ctrl="C1"), adt(ctrl="C1")))

    first, second = result.rows["patients"]
    assert (first["resource_key"], first["content_hash"]) == (second["resource_key"], second["content_hash"])
    assert (first["source_position"], second["source_position"]) == (0, 1)


# --- framing ---------------------------------------------------------------------
@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"], ids=["cr", "lf", "crlf"])
def test_batch_files_and_bare_messages(separator):
    batch = ["FHS|^~\\&|LIS", "BHS|^~\\&|LIS", *adt(ctrl="C1"), *oru(ctrl="C2"), *adt("A04", ctrl="C3"), "BTS|3",
             "FTS|1"]

    result = parse(separator.join(s.encode("utf-8") for s in batch) + separator)

    assert result.quarantine == []
    assert [r["source_position"] for r in result.rows["patients"]] == [0, 1, 2]


def test_a_cut_mllp_frame_is_quarantined_and_the_others_proceed():
    content = mllp(adt(ctrl="C1"), adt(ctrl="C2")) + b"\x0b" + "\r".join(adt(ctrl="C3")[:3]).encode()

    result = parse(content)

    assert reasons(result) == [(2, "malformed_frame")]
    assert len(result.rows["patients"]) == 2


def test_z_segments_are_ignored():
    result = parse(mllp(adt(extra=("ZPI|1|site specific|值",))))

    assert result.quarantine == []


# --- bad messages ------------------------------------------------------------------
BAD_MESSAGES = {
    "missing_msh": (adt()[1:], "missing_msh"),
    "bad_segment_id": (adt()[:3] + ["this is not a segment"] + adt()[3:], "bad_segment"),
    "lower_case_segment": (adt()[:3] + ["pid|1"] + adt()[3:], "bad_segment"),
    "unknown_segment": (adt()[:3] + ["QQQ|1"] + adt()[3:], "bad_segment"),
    "birth_date_not_a_date": (adt(dob="19491345"), "unparseable_date"),
    "birth_date_european": (adt(dob="31/12/1949"), "unparseable_date"),
    "obx_time_not_a_date": (oru(obx_time="2024-03-05 09:30"), "unparseable_date"),
    "nm_not_a_number": (oru(value="六点八"), "invalid_value"),
    "oru_without_pid": ([oru()[0], *oru()[2:]], "missing_required_field"),
    "adt_without_pid": ([*adt()[:2], *adt()[3:]], "invalid_structure"),
    "adt_with_two_pids": ([*adt()[:3], *adt()[2:]], "invalid_structure"),
    "unsupported_version": ([adt()[0].replace("|2.5|", "|2.9|"), *adt()[1:]], "unsupported_version"),
    "no_message_type": ([adt()[0].replace("ADT^A01^ADT_A01", ""), *adt()[1:]], "invalid_header"),
    "pid_without_identifier": ([*adt()[:2], PID.format(dob="19491231").replace(f"{MRN}^^^WHSY^MR~", ""),
                                *adt()[3:]], "missing_required_field"),
}


@pytest.mark.parametrize(("segments", "code"), BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_bad_messages_are_quarantined_with_a_specific_reason_and_no_values(segments, code):
    result = parse(mllp(adt(ctrl="C0"), segments, oru(ctrl="C2")))

    (record,) = result.quarantine
    assert (record.position, record.reason_code) == (1, code), record.reason
    assert not [s for s in SENSITIVE if s in record.reason], record.reason
    assert (record.source_object, record.institution, record.stage) == (SOURCE, "whsy", "ingest")
    assert [r["source_position"] for r in result.rows["patients"]] == [0, 2]  # the rest proceeds


def test_text_that_is_not_the_declared_charset_is_an_encoding_error():
    message = "\r".join(adt()).encode("gbk")

    result = parse(b"\x0b" + message + b"\r\x1c\r")

    assert reasons(result) == [(0, "encoding_error")]


def test_a_declared_gb18030_message_is_decoded():
    segments = adt()
    segments[0] = segments[0].replace("UNICODE UTF-8", "GB 18030-2000")

    result = parse(b"\x0b" + "\r".join(segments).encode("gb18030") + b"\r\x1c\r")

    assert result.rows["patients"][0]["name_zh"] == NAME_FAMILY + NAME_GIVEN


def test_other_message_types_are_out_of_scope_not_quarantined():
    discharge = [adt()[0].replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03"), *adt()[1:]]
    ack = ["MSH|^~\\&|HIS|WHSY|MEDLLM|MEDLLM|20240305090000||ACK^A01|C5|P|2.5", "MSA|AA|C1"]

    result = parse(mllp(discharge, ack, adt()))

    assert (result.out_of_scope, result.quarantine, len(result.rows["patients"])) == (2, [], 1)


@pytest.mark.parametrize("content", [b"", b"\r\n \r", b"\x0b\x1c\r"], ids=["zero", "blank", "empty_frame"])
def test_an_empty_file(content):
    assert reasons(parse(content)) == [(None, "empty_file")]


def test_positions_count_every_message():
    content = mllp(adt(ctrl="A"), adt()[1:], adt(ctrl="B"))

    assert [m.position for m in split_hl7_messages(content)] == [0, 1, 2]


# --- dates ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", "2024"), ("202403", "2024-03"), ("20240305", "2024-03-05"), ("2024030509", "2024-03-05T09:00:00"),
        ("202403050930", "2024-03-05T09:30:00"), ("20240305093015", "2024-03-05T09:30:15"),
        ("20240305093015.25", "2024-03-05T09:30:15.25"), ("20240305093015+0800", "2024-03-05T09:30:15+08:00"),
        ("202403050930-0500", "2024-03-05T09:30:00-05:00"), ("20240305^D", "2024-03-05"), ("", None), (None, None),
    ],
)
def test_hl7_dates_become_iso_8601(value, expected):
    assert hl7_datetime(value, "X-1") == expected


@pytest.mark.parametrize("value", ["2024-03-05", "20241305", "20240230", "2024030525", "20240305093075",
                                   "20240305+2500", "abc", "196203520"])
def test_bad_hl7_dates_raise_naming_the_field(value):
    with pytest.raises(Rejected) as raised:
        hl7_datetime(value, "PID-7")

    assert raised.value.code == "unparseable_date" and raised.value.reason.startswith("PID-7")
