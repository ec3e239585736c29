"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017): the clinical baseline of the
deterioration model, computed from the same hourly vitals.

Scoring bands (chart 1 of the RCP report), SpO2 on scale 1 (scale 2 is for hypercapnic respiratory failure and
needs a clinician's decision per patient, which the data do not hold)::

    parameter            3        2        1         0          1          2          3
    respiration rate     <=8               9-11      12-20                 21-24      >=25
    SpO2 scale 1         <=91     92-93    94-95     >=96
    air or oxygen                 oxygen             air
    systolic BP          <=90     91-100   101-110   111-219                          >=220
    pulse                <=40              41-50     51-90      91-110     111-130    >=131
    consciousness                                    alert                            new confusion, V, P or U
    temperature (C)      <=35.0            35.1-36.0 36.1-38.0  38.1-39.0  >=39.1

A missing parameter scores 0 (the caller carries the last reading forward first, as a chart does).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike

# (upper bound inclusive, points) in increasing order; above the last bound: the final points.
RESPIRATION_BANDS = ((8, 3), (11, 1), (20, 0), (24, 2))
RESPIRATION_ABOVE = 3
SPO2_SCALE1_BANDS = ((91, 3), (93, 2), (95, 1))
SPO2_SCALE1_ABOVE = 0
SYSTOLIC_BANDS = ((90, 3), (100, 2), (110, 1), (219, 0))
SYSTOLIC_ABOVE = 3
PULSE_BANDS = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2))
PULSE_ABOVE = 3
TEMPERATURE_BANDS = ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1))
TEMPERATURE_ABOVE = 2
SUPPLEMENTAL_OXYGEN_POINTS = 2
NOT_ALERT_POINTS = 3
ACVPU_ALERT = "A"
ACVPU_LEVELS = ("A", "C", "V", "P", "U")


def band_points(values: ArrayLike, bands: tuple[tuple[float, int], ...], above: int) -> np.ndarray:
    """Points of each value under ``bands``; NaN (missing) scores 0."""
    values = np.asarray(values, dtype=float)
    points = np.full(values.shape, above, dtype=int)
    for bound, score in reversed(bands):
        points = np.where(values <= bound, score, points)
    return np.where(np.isnan(values), 0, points)


def consciousness_points(acvpu: ArrayLike) -> np.ndarray:
    """3 for new confusion, voice, pain or unresponsive; 0 for alert or missing."""
    levels = np.asarray(acvpu, dtype=object)
    return np.array([NOT_ALERT_POINTS if level in ACVPU_LEVELS[1:] else 0 for level in levels.ravel()],
                    dtype=int).reshape(levels.shape)


def news2_components(*, respiratory_rate: ArrayLike, spo2: ArrayLike, systolic_bp: ArrayLike, heart_rate: ArrayLike,
                     temperature: ArrayLike, acvpu: ArrayLike,
                     on_oxygen: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Points per parameter (SpO2 scale 1); ``on_oxygen`` None: breathing air."""
    oxygen = np.zeros(np.shape(respiratory_rate), dtype=int) if on_oxygen is None else (
        np.asarray(on_oxygen, dtype=bool).astype(int) * SUPPLEMENTAL_OXYGEN_POINTS)
    return {
        "respiration_rate": band_points(respiratory_rate, RESPIRATION_BANDS, RESPIRATION_ABOVE),
        "spo2_scale1": band_points(spo2, SPO2_SCALE1_BANDS, SPO2_SCALE1_ABOVE),
        "air_or_oxygen": oxygen,
        "systolic_bp": band_points(systolic_bp, SYSTOLIC_BANDS, SYSTOLIC_ABOVE),
        "pulse": band_points(heart_rate, PULSE_BANDS, PULSE_ABOVE),
        "consciousness": consciousness_points(acvpu),
        "temperature": band_points(temperature, TEMPERATURE_BANDS, TEMPERATURE_ABOVE),
    }


def news2_score(**vitals: ArrayLike | None) -> np.ndarray:
    """The aggregate NEWS2 score (0-20): the sum of :func:`news2_components`."""
    return np.sum(list(news2_components(**vitals).values()), axis=0)  # type: ignore[arg-type]
