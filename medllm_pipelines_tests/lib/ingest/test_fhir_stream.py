"""Streaming NDJSON (bounded batches from chunks), re-sent resources, big Bundles, and the
fast validator's equivalence with full ``fhir.resources`` validation."""

from __future__ import annotations

import io
import tracemalloc

import orjson
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.lib.ingest.feed import ParsedFeed
from medllm_pipelines.lib.ingest.fhir import ResentFilter, iter_ndjson_batches, parse_fhir_object
from medllm_pipelines.lib.ingest.tables import rows_to_frame
from medllm_pipelines.lib.ingest.fhir_validation import (
    FULL,
    ResourceValidator,
    differential_check,
)
from medllm_pipelines.lib.ingest.landing import FHIR_BUNDLE, FHIR_NDJSON
from medllm_pipelines.lib.security.envelope import decrypt_stream, encrypt_bytes
from medllm_pipelines_tests.lib.ingest.test_fhir import (
    NAME_ZH,
    SENSITIVE,
    observation,
    patient,
)
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

SOURCE = "b" * 64


def stream(source, **kwargs) -> list[ParsedFeed]:
    return list(iter_ndjson_batches(source, institution="h1", source_object=SOURCE, asset="ingest/fhir", **kwargs))


def merged(batches: list[ParsedFeed]) -> ParsedFeed:
    total = ParsedFeed()
    for batch in batches:
        total.extend(batch)
    total.reconciliation()  # in = out + quarantined + out of scope + re-sent, or it raises
    return total


def ndjson(resources: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def feed(n: int) -> list[dict]:
    resources: list[dict] = []
    for i in range(n):
        resources.append(patient(id=f"p{i}") if i % 5 == 0 else observation(f"Patient/p{i - i % 5}", id=f"o{i}"))
    return resources


def summary(result: ParsedFeed) -> tuple:
    rows = {t: [(r["resource_key"], r["source_position"], r["content_hash"]) for r in rs] for t, rs in result.rows.items()}
    return rows, [(q.position, q.reason_code, q.reason) for q in result.quarantine], result.resources_seen


@pytest.mark.parametrize("chunk", [1, 7, 4096], ids=["1_byte", "7_bytes", "4_kib"])
def test_chunk_boundaries_anywhere_give_the_same_result_as_the_whole_file(chunk):
    lines = [orjson.dumps(r) for r in feed(12)]
    lines[3] = f'{{"resourceType": "Patient", "name": [{{"text": "{NAME_ZH}"}}]}}'.encode("gbk")  # not UTF-8
    lines[6] = b'{"resourceType": "Observation", "id": "cut'
    content = b"\r\n".join(lines) + b"\r\n\n"
    whole = parse_fhir_object(content, kind=FHIR_NDJSON, institution="h1", source_object=SOURCE, asset="ingest/fhir")

    pieces = [content[i:i + chunk] for i in range(0, len(content), chunk)]
    streamed = merged(stream(iter(pieces), batch_size=5))

    assert summary(streamed) == summary(whole)
    assert [(q.position, q.reason_code) for q in streamed.quarantine] == [(3, "encoding_error"), (6, "malformed_json")]


def test_batches_are_bounded_and_reconcile():
    batches = stream(io.BytesIO(ndjson(feed(23))), batch_size=5)

    assert [b.resources_seen for b in batches] == [5, 5, 5, 5, 3]
    assert merged(batches).records_out == 23


def test_gbk_text_in_a_utf8_feed_names_line_and_byte_but_the_rest_proceeds():
    good = [orjson.dumps(r) for r in feed(4)]
    bad = f'{{"resourceType": "Patient", "id": "px", "name": [{{"text": "{NAME_ZH}"}}]}}'.encode("gbk")
    content = b"\n".join([good[0], good[1], bad, good[2], good[3]]) + b"\n"

    result = merged(stream([content]))

    (record,) = result.quarantine
    with pytest.raises(UnicodeDecodeError) as decoding:
        bad.decode("utf-8")
    first_bad = len(good[0]) + 1 + len(good[1]) + 1 + decoding.value.start
    assert (record.position, record.reason_code) == (2, "encoding_error")
    assert f"byte offset {first_bad} in the file" in record.reason
    assert not [s for s in SENSITIVE if s in record.reason]
    assert result.records_out == 4


@pytest.mark.parametrize("content", [[], [b""], [b"  \n\n \r\n"]], ids=["no_chunks", "zero_bytes", "whitespace"])
def test_an_empty_stream_is_one_empty_file_record(content):
    result = merged(stream(content))

    assert [(q.position, q.reason_code) for q in result.quarantine] == [(None, "empty_file")]


def test_unknown_resource_type_and_out_of_scope_types_in_a_stream():
    content = ndjson([{"resourceType": "PatientRecord", "id": "x"}, {"resourceType": "Practitioner", "id": "d1"},
                      patient(id="p1")])

    result = merged(stream([content]))

    assert [(q.position, q.reason_code) for q in result.quarantine] == [(0, "unknown_resource_type")]
    assert (result.out_of_scope, result.records_out) == (1, 1)


def test_decrypted_chunks_stream_straight_into_the_parser():
    provider = LocalTestKeyProvider()
    plaintext = ndjson(feed(40))
    blob = encrypt_bytes(plaintext, provider, aad=b"obj", chunk_size=1000)

    result = merged(stream(decrypt_stream(io.BytesIO(blob), provider, aad=b"obj"), batch_size=16))

    assert result.records_out == 40
    assert result.rows["patients"][0]["resource_key"] == "p0"


def test_resent_resources_do_not_duplicate_but_conflicting_versions_are_kept():
    original = observation("Patient/p1", id="o1", meta={"versionId": "1"})
    conflicting = observation("Patient/p1", id="o1", meta={"versionId": "1"}, status="amended")
    newer = observation("Patient/p1", id="o1", meta={"versionId": "2"})
    content = ndjson([patient(id="p1"), original, original, conflicting, newer, original])

    filtered = merged(stream([content], resent=ResentFilter()))
    unfiltered = merged(stream([content]))

    assert filtered.resent == 2
    assert [(r["version_id"], r["status"]) for r in filtered.rows["observations"]] == [
        ("1", "final"), ("1", "amended"), ("2", "final")
    ]
    assert filtered.reconciliation().removed_by_rule["resent_resource"] == 2
    assert (unfiltered.resent, len(unfiltered.rows["observations"])) == (0, 5)


def test_one_filter_drops_copies_across_files():
    shared = ResentFilter()
    first = merged(stream([ndjson([patient(id="p1")])], resent=shared))
    second = merged(stream([ndjson([patient(id="p1"), patient(id="p2")])], resent=shared))

    assert (first.records_out, second.records_out, second.resent, len(shared)) == (1, 1, 1, 2)


def test_a_bundle_of_10000_entries_quarantines_only_its_one_invalid_entry():
    entries = [{"fullUrl": f"urn:uuid:{i}", "resource": observation("urn:uuid:p", id=f"o{i}")} for i in range(10_000)]
    entries[7321]["resource"]["effectiveDateTime"] = "2024-13-45T00:00:00Z"
    content = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})

    result = parse_fhir_object(content, kind=FHIR_BUNDLE, institution="h1", source_object=SOURCE, asset="ingest/fhir")

    assert [(q.position, q.reason_code) for q in result.quarantine] == [(7321, "invalid_resource")]
    assert "effectiveDateTime" in result.quarantine[0].reason
    assert result.records_out == 9_999


def test_memory_stays_flat_in_the_number_of_lines():
    def peak(n: int) -> int:
        line = orjson.dumps(observation("Patient/p1", id="o1")) + b"\n"
        chunks = (line * 200 for _ in range(n // 200))
        tracemalloc.start()
        for batch in iter_ndjson_batches(chunks, institution="h1", source_object=SOURCE, asset="a", batch_size=500):
            rows_to_frame("observations", batch.rows["observations"])
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(1_000), peak(4_000)

    assert large < small * 1.3, (small, large)


def test_full_mode_gives_the_same_rows_and_reasons():
    resources = [*feed(10), observation("Patient/p0", id="bad", status=None), patient(id="q", birthDate="1990-02-30")]
    content = ndjson(resources)

    fast = merged(stream([content]))
    full = merged(stream([content], validator=ResourceValidator(FULL)))

    assert summary(fast) == summary(full)
    assert [(q.position, q.reason_code) for q in fast.quarantine] == [(10, "invalid_resource"), (11, "invalid_resource")]


def test_shape_cached_validation_agrees_with_full_validation_on_mutated_resources():
    seeds = [
        *feed(10),
        observation("Patient/p1", id="o9", valueQuantity={"value": 7, "unit": "mmol/L", "system": codes.UCUM,
                                                          "code": "mmol/L"}),
        patient(id="p9", _birthDate={"extension": [{"url": "http://x.org/e", "valueString": "approx"}]}),
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": codes.ICD10_WHO, "code": "E11.9"}]}, "onsetDateTime": "2020-04-01",
         "clinicalStatus": {"coding": [{"code": "active"}]}},
    ]

    counts = differential_check(seeds, mutations=2_500, seed=7)

    assert counts["false_accepts"] == 0 and counts["false_rejects"] == 0, counts
    assert counts["rejected_by_full"] > 500 and counts["fast_accepts"] > 500, counts
