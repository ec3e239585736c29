"""The bedside vitals feed (``lib/ingest/vitals.py``) on observations as real senders shape them."""

from __future__ import annotations

import orjson

from medllm_pipelines.lib.ingest.vitals import OUT_OF_SCOPE, VitalsFeed, parse_vitals_object

LOINC = "http://loinc.org"


def _observation(code: dict, **extra: object) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"coding": [code]},
            "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
            "effectiveDateTime": "2026-03-01T08:00:00+08:00", **extra}


def _quantity(value: float) -> dict:
    return {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}


def test_a_blood_pressure_panel_gives_its_systolic_reading() -> None:
    panel = _observation({"system": LOINC, "code": "85354-9"}, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _quantity(70)},
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _quantity(118)}])
    plain = _observation({"system": LOINC, "code": "8480-6"}, valueQuantity=_quantity(121))
    diastolic_only = _observation({"system": LOINC, "code": "85354-9"}, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _quantity(70)}])
    feed = VitalsFeed()
    lines = b"\n".join(orjson.dumps(r) for r in (panel, plain, diastolic_only))
    parse_vitals_object(feed, [lines], institution="conf", source_object="vitals.ndjson")

    assert [(r["vital"], r["value"]) for r in feed.readings] == [("systolic_bp", 118), ("systolic_bp", 121)]
    assert feed.removed == {OUT_OF_SCOPE: 1}  # no vital of the score in it: set aside, counted
    assert feed.reconciliation().records_in == 3
