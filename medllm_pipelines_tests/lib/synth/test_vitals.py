"""The vital-signs generator: deterministic, its written process reproduced by its parameters, its files FHIR R4
that the ingest stage reads, and its Bayes-optimal risk better than NEWS2."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sklearn.metrics import roc_auc_score

from medllm_pipelines.lib.curate.sequences import build_windows, window_labels
from medllm_pipelines.lib.ingest.vitals import VitalsFeed, parse_vitals_object
from medllm_pipelines.lib.synth.vitals import PROCESS, bayes_optimal_risk, simulate_stay, stays_as_table
from medllm_pipelines_tests.lib.synth.conftest import Hospital


@pytest.fixture(scope="module")
def stays():
    rng = np.random.default_rng(2024)
    return [simulate_stay(rng) for _ in range(500)]


def test_the_same_seed_gives_the_same_stays() -> None:
    first = [simulate_stay(np.random.default_rng(7)) for _ in range(3)]
    again = [simulate_stay(np.random.default_rng(7)) for _ in range(3)]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.readings, b.readings, equal_nan=True) and a.event_hour == b.event_hour


def test_the_process_shows_its_written_parameters(stays) -> None:
    stable = np.concatenate([s.severity[: s.onset] if s.onset else s.severity for s in stays])
    assert stable.std() == pytest.approx(PROCESS.sd_stationary, rel=0.1)
    hours = np.array([s.planned_hours for s in stays])
    assert hours.min() >= PROCESS.hours_min and hours.max() <= PROCESS.hours_max
    for stay in stays:
        if stay.event_hour is not None:
            assert stay.onset is not None and stay.hours == stay.event_hour < stay.planned_hours
        else:
            assert stay.hours == stay.planned_hours
    readings = np.concatenate([s.readings for s in stays])
    assert np.isnan(readings).mean() == pytest.approx(PROCESS.p_missing, abs=0.01)
    # heart rate = 78 + 14 s + noise: the fitted slope on the latent severity recovers 14
    severity = np.concatenate([s.severity for s in stays])
    heart = readings[:, 0]
    seen = ~np.isnan(heart)
    assert np.polyfit(severity[seen], heart[seen], 1)[0] == pytest.approx(14.0, rel=0.05)


def test_the_optimum_beats_news2_on_the_same_windows(stays) -> None:
    risks = bayes_optimal_risk([(s.readings, s.acvpu) for s in stays], 12)
    labels, scores = [], []
    for stay, risk in zip(stays, risks, strict=True):
        kept, label = window_labels(stay.hours, stay.event_hour, 12)
        labels.append(label[kept])
        scores.append(risk[kept])
    optimum = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
    windows = build_windows(stays_as_table(stays), 12).frame
    news2 = roc_auc_score(windows["label"], windows["news2"])
    assert len(windows) == sum(len(x) for x in labels)
    assert optimum > news2 + 0.02 and optimum > 0.85


def test_the_hospital_writes_fhir_vitals_the_ingest_stage_reads(clean_hospital: Hospital) -> None:
    truth = [orjson.loads(line) for line in (clean_hospital.root / "_truth" / "vitals.jsonl").read_bytes().splitlines()]
    assert truth and clean_hospital.manifest.truth_files["vitals"] == "_truth/vitals.jsonl"
    feed = VitalsFeed()
    for path in sorted(clean_hospital.root.glob("*/vitals/*.ndjson")):
        parse_vitals_object(feed, [path.read_bytes()], institution=path.parts[-3], source_object=path.name)
    assert feed.quarantine == [] and feed.records_in == len(feed.readings) + len(feed.events) > 0
    assert len(feed.events) == sum(row["event_hour"] is not None for row in truth)
    assert {row["encounter_key"] for row in feed.readings} == {row["encounter_id"] for row in truth}
