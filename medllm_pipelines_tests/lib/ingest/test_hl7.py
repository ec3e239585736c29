"""HL7 v2 ADT/ORU/MDM messages -> the FHIR parser's rows; the specification's example messages;
framing; dates; what is accepted with a warning; and unusable messages quarantined with a specific
reason and no values. Real senders' files: test_hl7_conformance.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.feed import ParsedFeed
from medllm_pipelines.lib.ingest.hl7 import parse_hl7_object
from medllm_pipelines.lib.ingest.hl7_framing import Rejected, split_hl7_messages
from medllm_pipelines.lib.ingest.hl7_message import hl7_datetime
from medllm_pipelines.lib.ingest.tables import table_columns

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


def parse(content: bytes) -> ParsedFeed:
    result = parse_hl7_object(content, institution="whsy", source_object=SOURCE, asset="ingest/hl7")
    result.reconciliation()  # every row, quarantined message and out-of-scope message accounted for
    return result


def reasons(result: ParsedFeed) -> list[tuple[int | None, str]]:
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

    # as interface engines do: the message is used, the date left empty and the finding recorded
    assert result.quarantine == []
    (patient,) = result.rows["patients"]
    assert (patient["name_en"], patient["birth_date"]) == ("EVE EVERYWOMAN", None)
    assert [(w.position, w.code, w.reason) for w in result.warnings] == [
        (0, "patient_identifier_not_mr", "PID-3 (segment 2) has no MR identifier: MRN taken from type untyped"),
        (0, "unparseable_date", "PID-7 (segment 2, date/time of birth) is not an HL7 date/time: left empty"),
    ]
    assert result.warnings_by_code == {"patient_identifier_not_mr": 1, "unparseable_date": 1}


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


def test_z_segments_are_kept_aside_and_counted():
    result = parse(mllp(adt(extra=("ZPI|1|site specific|值",))))

    assert result.quarantine == [] and len(result.rows["patients"]) == 1
    assert result.warnings_by_code == {"z_segment": 1}
    assert "值" not in result.warnings[0].reason


@pytest.mark.parametrize(("prefix", "separator"), [(b"\xef\xbb\xbf", b"\r"), (b"\xef\xbb\xbf", b"\n"),
                                                   (b"", b"\r\n")], ids=["bom_cr", "bom_lf", "crlf"])
def test_a_byte_order_mark_and_any_segment_terminator(prefix, separator):
    content = prefix + separator.join(s.encode("utf-8") for s in adt()) + separator

    result = parse(content)

    assert result.quarantine == [] and result.rows["patients"][0]["name_zh"] == NAME_FAMILY + NAME_GIVEN
    assert result.warnings_by_code.get("byte_order_mark", 0) == (1 if prefix else 0)


def test_a_batch_inside_one_mllp_frame_is_split_into_its_messages():
    batch = ["FHS|^~\\&|LIS", "BHS|^~\\&|LIS", *adt(ctrl="C1"), *oru(ctrl="C2"), "BTS|2", "FTS|1"]

    result = parse(b"\x0b" + "\r".join(batch).encode("utf-8") + b"\r\x1c\r")

    assert result.quarantine == [] and result.messages_read == 2
    assert [r["source_position"] for r in result.rows["patients"]] == [0, 1]


# --- bad messages ------------------------------------------------------------------
BAD_MESSAGES = {
    "missing_msh": (adt()[1:], "missing_msh"),
    "bad_segment_id": (adt()[:3] + ["this is not a segment"] + adt()[3:], "bad_segment"),
    "lower_case_segment": (adt()[:3] + ["pid|1"] + adt()[3:], "bad_segment"),
    "oru_without_pid": ([oru()[0], *oru()[2:]], "missing_required_field"),
    "adt_without_pid": ([*adt()[:2], *adt()[3:]], "missing_required_field"),
    "no_message_type": ([adt()[0].replace("ADT^A01^ADT_A01", ""), *adt()[1:]], "invalid_header"),
    "separators_unusable": ([adt()[0].replace("^~\\&", "^^^^"), *adt()[1:]], "invalid_header"),
    "pid_3_empty": ([*adt()[:2], PID.format(dob="19491231").replace(
        f"{MRN}^^^WHSY^MR~{RESIDENT_ID}^^^CHN&2.16.156.10011.1.5&ISO^NNCHN", ""), *adt()[3:]],
        "missing_required_field"),
}


@pytest.mark.parametrize(("segments", "code"), BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_bad_messages_are_quarantined_with_a_specific_reason_and_no_values(segments, code):
    result = parse(mllp(adt(ctrl="C0"), segments, oru(ctrl="C2")))

    (record,) = result.quarantine
    assert (record.position, record.reason_code) == (1, code), record.reason
    assert not [s for s in SENSITIVE if s in record.reason], record.reason
    assert (record.source_object, record.institution, record.stage) == (SOURCE, "whsy", "ingest")
    assert [r["source_position"] for r in result.rows["patients"]] == [0, 2]  # the rest proceeds


# message -> (warning code, what the row shows); the message is used, nothing is quarantined
ACCEPTED_WITH_A_WARNING = {
    "undefined_segment": (adt()[:3] + ["QQQ|1"] + adt()[3:], "undefined_segment", None),
    "birth_date_not_a_date": (adt(dob="19491345"), "unparseable_date", ("patients", "birth_date", None)),
    "birth_date_european": (adt(dob="31/12/1949"), "unparseable_date", ("patients", "birth_date", None)),
    "obx_time_not_a_date": (oru(obx_time="2024-03-05 09:30"), "unparseable_date",
                            ("observations", "effective", "2024-03-05T09:00:00+08:00")),  # OBR-7 stands in
    "nm_not_a_number": (oru(value="六点八"), "invalid_value", ("observations", "value", None)),
    "adt_with_two_pids": ([*adt()[:3], *adt()[2:]], "nonconforming_structure", None),
    "version_2_9": ([adt()[0].replace("|2.5|", "|2.9|"), *adt()[1:]], "version_fallback", None),
    "no_version": ([adt()[0].replace("|2.5|", "||"), *adt()[1:]], "version_assumed", None),
    "pid_3_only_resident_id": ([*adt()[:2], PID.format(dob="19491231").replace(f"{MRN}^^^WHSY^MR~", ""),
                                *adt()[3:]], None, ("patients", "mrn", None)),
}


@pytest.mark.parametrize(("segments", "code", "shows"), ACCEPTED_WITH_A_WARNING.values(),
                         ids=ACCEPTED_WITH_A_WARNING.keys())
def test_what_interface_engines_accept_is_used_with_a_warning(segments, code, shows):
    result = parse(mllp(adt(ctrl="C0"), segments, oru(ctrl="C2")))

    assert result.quarantine == []
    assert {r["source_position"] for r in result.rows["patients"]} == {0, 1, 2}
    found = [(w.position, w.code) for w in result.warnings]
    if code is not None:
        assert (1, code) in found, found
        assert not [w for w in result.warnings for s in SENSITIVE if s in w.reason]
    if shows is not None:
        table, column, value = shows
        rows = [r for r in result.rows[table] if r["source_position"] == 1]
        assert rows and all(r[column] == value for r in rows if table == "patients" or r["code"] == "4548-4")
    assert sum(result.warnings_by_code.values()) == len(result.warnings)


def test_a_patient_with_only_a_resident_id_is_keyed_by_it():
    pid = PID.format(dob="19491231").replace(f"{MRN}^^^WHSY^MR~", "")

    result = parse(mllp([*adt()[:2], pid, *adt()[3:]]))

    (patient,) = result.rows["patients"]
    assert (patient["mrn"], patient["resident_id"]) == (None, RESIDENT_ID)
    assert RESIDENT_ID not in patient["resource_key"]


@pytest.mark.parametrize(
    ("pid_3", "mrn"),
    [
        ("A1^^^H^PN~M1^^^H^MR~P1^^^H^PI", "M1"),  # MR wins wherever it is
        ("S1^^^SSA^SS~P1^^^H^PI~T1^^^H^PT", "P1"),  # then PI, PT
        ("S1^^^SSA^SS~U1^^^H", "U1"),  # untyped before any other type
        ("A1^^^H^AN~N1^^^H^PN", "N1"),  # PN before AN
        ("0000112234^^^100^A~S1^^^SSA^SS", "0000112234"),  # otherwise the first one sent
        (f"{RESIDENT_ID}^^^CHN&2.16.156.10011.1.5&ISO^NNCHN~X1^^^H^XX", "X1"),  # the 身份证号 is never the MRN
    ],
)
def test_every_pid_3_repetition_is_considered_in_a_documented_order(pid_3, mrn):
    pid = f"PID|1||{pid_3}||{NAME_FAMILY}^{NAME_GIVEN}||19491231|F"

    result = parse(mllp([*adt()[:2], pid, *adt()[3:]]))

    assert result.rows["patients"][0]["mrn"] == mrn
    assert (result.warnings_by_code.get("patient_identifier_not_mr", 0) == 0) == (mrn == "M1")


def test_an_oru_with_two_patient_groups_and_several_orders():
    second_pid = PID.format(dob="19600101").replace(MRN, "WS0300999").replace(
        f"~{RESIDENT_ID}^^^CHN&2.16.156.10011.1.5&ISO^NNCHN", "")
    message = [*oru(), "OBR|2|ORD2^HIS|FIL2^LIS|LAB^血脂^L|||20240306090000+0800",
               "OBX|1|NM|14647-2^总胆固醇^LN||5.2|mmol/L^mmol/L^UCUM|||||F",
               second_pid, "OBR|1|ORD3^HIS|FIL3^LIS|LAB^生化^L|||20240307090000+0800",
               "OBX|1|NM|4548-4^HbA1c^LN||7.1|%^%^UCUM|||||F"]

    result = parse(mllp(message))

    first, second = result.rows["patients"]
    owner = {o["value"]: o["patient_key"] for o in result.rows["observations"]}
    assert owner == {6.8: first["resource_key"], 6.1: first["resource_key"], 5.2: first["resource_key"],
                     7.1: second["resource_key"]}
    cholesterol = next(o for o in result.rows["observations"] if o["value"] == 5.2)
    assert cholesterol["effective"] == "2024-03-06T09:00:00+08:00"  # its own OBR's time


def test_an_oru_patient_group_without_identity_is_set_aside_alone():
    message = [*oru(), "PID|2||||Nobody^Known||19600101|M", "OBR|1|ORD3^HIS|FIL3^LIS|LAB^生化^L",
               "OBX|1|NM|4548-4^HbA1c^LN||7.1|%^%^UCUM|||||F"]

    result = parse(mllp(message))

    assert reasons(result) == [(0, "missing_required_field")]
    assert "PID-3 (segment 6)" in result.quarantine[0].reason
    assert len(result.rows["patients"]) == 1 and 7.1 not in {o["value"] for o in result.rows["observations"]}


MDM = ["MSH|^~\\&|EMR|WHSY|MEDLLM|MEDLLM|20240305110000+0800||MDM^T02^MDM_T02|D1|P|2.5||||||UNICODE UTF-8|zh-CN",
       "EVN|T02|20240305110000+0800", "PID|1||WS0300123^^^WHSY^MR||欧阳^娜娜||19491231|F",
       "PV1|1|I|||||||||||||||||V0001^^^WHSY^VN",
       "TXA|1|DS|TX|20240305100000+0800||20240305103000+0800||||||DOC-1^EMR||||AU||AV",
       "OBX|1|TX|DS^出院小结^L||主诉：多饮多尿三月。~诊断：2型糖尿病。|||||F",
       "OBX|2|FT|DS^出院小结^L||血糖控制可\\.br\\出院带药：二甲双胍|||||F"]


def test_an_mdm_t02_document_feeds_notes_with_the_fhir_columns():
    result = parse(mllp(MDM))

    assert result.quarantine == []
    (note,) = result.rows["notes"]
    assert set(note) == set(table_columns("notes"))
    assert {k: note[k] for k in ("status", "date", "content_type", "language", "text", "resource_type")} == {
        "status": "current", "date": "2024-03-05T10:30:00+08:00", "content_type": "text/plain",
        "language": "zh-CN", "text": "主诉：多饮多尿三月。\n诊断：2型糖尿病。\n血糖控制可\n出院带药：二甲双胍",
        "resource_type": "DocumentReference",
    }
    assert note["patient_key"] == result.rows["patients"][0]["resource_key"]
    assert result.rows["observations"] == []  # a document's OBX are its content, not observations
    assert "DOC-1" not in note["resource_key"]


def test_an_mdm_document_sent_as_base64_text_is_decoded():
    import base64

    data = base64.b64encode("随访记录：血压稳定".encode()).decode()
    message = [*MDM[:5], f"OBX|1|ED|DS^随访^L||EMR^text^plain^Base64^{data}|||||F"]

    (note,) = parse(mllp(message)).rows["notes"]

    assert (note["text"], note["content_type"]) == ("随访记录：血压稳定", "text/plain")


def test_an_exception_inside_one_message_is_its_quarantine_record(monkeypatch):
    from medllm_pipelines.lib.ingest.hl7_mapping import MessageMapper

    def broken(*args, **kwargs):
        raise RuntimeError("boom with PHI 11010519491231002X")

    monkeypatch.setattr(MessageMapper, "_condition", broken)

    result = parse(mllp(oru(ctrl="C1"), adt(ctrl="C2"), oru(ctrl="C3")))

    assert reasons(result) == [(1, "parser_error")]
    assert result.quarantine[0].reason == "unexpected RuntimeError while reading the message"
    assert [r["source_position"] for r in result.rows["patients"]] == [0, 2]


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
