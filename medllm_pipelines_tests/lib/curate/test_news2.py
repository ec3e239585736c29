"""NEWS2 (Royal College of Physicians 2017) against its published scoring bands, SpO2 scale 1 and ACVPU."""

from __future__ import annotations

import numpy as np
import pytest

from medllm_pipelines.lib.curate.news2 import (
    PULSE_ABOVE,
    PULSE_BANDS,
    RESPIRATION_ABOVE,
    RESPIRATION_BANDS,
    SPO2_SCALE1_ABOVE,
    SPO2_SCALE1_BANDS,
    SYSTOLIC_ABOVE,
    SYSTOLIC_BANDS,
    TEMPERATURE_ABOVE,
    TEMPERATURE_BANDS,
    band_points,
    consciousness_points,
    news2_components,
    news2_score,
)

# (value, points) at every band edge of chart 1 of the RCP NEWS2 report
RESPIRATION = [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (40, 3)]
SPO2_SCALE1 = [(85, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
SYSTOLIC = [(70, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]
PULSE = [(35, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2), (131, 3)]
TEMPERATURE = [(34.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2)]


@pytest.mark.parametrize(("bands", "above", "cases"), [
    (RESPIRATION_BANDS, RESPIRATION_ABOVE, RESPIRATION), (SPO2_SCALE1_BANDS, SPO2_SCALE1_ABOVE, SPO2_SCALE1),
    (SYSTOLIC_BANDS, SYSTOLIC_ABOVE, SYSTOLIC), (PULSE_BANDS, PULSE_ABOVE, PULSE),
    (TEMPERATURE_BANDS, TEMPERATURE_ABOVE, TEMPERATURE),
], ids=["respiration", "spo2_scale1", "systolic", "pulse", "temperature"])
def test_each_parameter_scores_its_published_bands(bands, above, cases) -> None:
    values, points = zip(*cases, strict=True)
    assert band_points(values, bands, above).tolist() == list(points)


def test_any_of_new_confusion_voice_pain_or_unresponsive_scores_three() -> None:
    assert consciousness_points(["A", "C", "V", "P", "U", None]).tolist() == [0, 3, 3, 3, 3, 0]


def test_a_healthy_adult_scores_zero_and_a_septic_one_scores_high() -> None:
    healthy = news2_score(respiratory_rate=[16], spo2=[98], systolic_bp=[125], heart_rate=[72], temperature=[36.8],
                          acvpu=["A"])
    septic = news2_components(respiratory_rate=[26], spo2=[91], systolic_bp=[88], heart_rate=[132],
                              temperature=[39.4], acvpu=["C"], on_oxygen=[True])
    assert healthy.tolist() == [0]
    assert {k: int(v[0]) for k, v in septic.items()} == {
        "respiration_rate": 3, "spo2_scale1": 3, "air_or_oxygen": 2, "systolic_bp": 3, "pulse": 3,
        "consciousness": 3, "temperature": 2}
    assert int(np.sum([v[0] for v in septic.values()])) == 19


def test_a_missing_reading_scores_nothing() -> None:
    assert news2_score(respiratory_rate=[np.nan], spo2=[np.nan], systolic_bp=[np.nan], heart_rate=[np.nan],
                       temperature=[np.nan], acvpu=[None]).tolist() == [0]
