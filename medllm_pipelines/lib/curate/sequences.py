"""The deterioration spec's dataset: one window per stay-hour from the de-identified hourly vitals.

Every hour ``t`` of a monitored stay is a window (the readings up to ``t``);
its label is "ICU admission within the next ``horizon`` hours" (``t < event <=
t + horizon``). A window is kept only when its future is observed: the event
falls within the horizon, or the readings go on through ``t + horizon``; the
last ``horizon`` hours of a stay without an event have an unknown label and
are not windows. NEWS2 of the hour (vitals carried forward within the stay)
is the clinical baseline, in the same table. Splits are per stay, grouped by
person and stratified by "the stay had an ICU admission": no person is in two
splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.curate.news2 import news2_score
from medllm_pipelines.lib.curate.splits import SplitConfig, SplitOutcome, assign_split_rows, check_leakage

VITALS = ("heart_rate", "respiratory_rate", "spo2", "temperature", "systolic_bp")
STAY_KEYS = ["patient_pseudonym", "institution", "stay_number"]
HOUR = "hours_since_admission"
WINDOW_COLUMNS = [*STAY_KEYS, HOUR, "label", "news2", "stay_icu_admission"]
SPLIT_COLUMNS = [*STAY_KEYS, "label", "split", "fold"]


def window_labels(hours: int, event_hour: int | None, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, label) per window end hour ``0 .. hours-1`` of a stay with ``hours`` hourly rows.

    With an event (at ``event_hour``, after the last row) every window is kept and
    its label is ``event_hour - t <= horizon``; without one, windows whose next
    ``horizon`` hours are observed are kept, all negative.
    """
    t = np.arange(hours)
    if event_hour is not None:
        return np.ones(hours, dtype=bool), (event_hour - t) <= horizon
    return t + horizon <= hours - 1, np.zeros(hours, dtype=bool)


def carried_forward(stay: pd.DataFrame) -> pd.DataFrame:
    """One row per hour ``0 .. last`` of one stay (missing hours added), readings carried forward."""
    last = int(stay[HOUR].max())
    event = stay["icu_admission_hour"].dropna()
    if len(event):
        last = max(last, int(event.iloc[0]) - 1)
    hourly = stay.set_index(HOUR).reindex(range(last + 1))
    hourly[[*VITALS, "acvpu"]] = hourly[[*VITALS, "acvpu"]].ffill()
    return hourly


@dataclass(frozen=True)
class DeteriorationDataset:
    """Windows (one row per kept stay-hour) and the stays they come from."""

    frame: pd.DataFrame
    stays: int
    horizon: int
    windows_not_kept: int

    def as_metadata(self) -> dict[str, Any]:
        frame = self.frame
        return {
            "stays": self.stays,
            "stays_with_icu_admission": int(frame.drop_duplicates(STAY_KEYS)["stay_icu_admission"].sum())
            if len(frame) else 0,
            "persons": int(frame["patient_pseudonym"].nunique()) if len(frame) else 0,
            "windows": len(frame),
            "positive_windows": int(frame["label"].sum()) if len(frame) else 0,
            "windows_with_unobserved_future": self.windows_not_kept,
            "horizon_hours": self.horizon,
        }


def consented(vitals: pd.DataFrame, consent_registry: pd.DataFrame, status: str = "granted") -> pd.DataFrame:
    """The rows of persons whose current research consent is ``status`` (``deidentify/consent_registry``)."""
    granted = consent_registry.loc[consent_registry["consent_status"] == status, "patient_pseudonym"]
    return vitals[vitals["patient_pseudonym"].isin(set(granted))]


def build_windows(vitals: pd.DataFrame, horizon: int) -> DeteriorationDataset:
    """The windows of every stay in the de-identified vitals table (``deidentify/vital_signs``)."""
    rows: list[pd.DataFrame] = []
    dropped = 0
    stays = 0
    for key, stay in vitals.sort_values([*STAY_KEYS, HOUR]).groupby(STAY_KEYS, sort=True):
        stays += 1
        hourly = carried_forward(stay)
        event = stay["icu_admission_hour"].dropna()
        event_hour = int(event.iloc[0]) if len(event) else None
        kept, label = window_labels(len(hourly), event_hour, horizon)
        dropped += int((~kept).sum())
        news2 = news2_score(respiratory_rate=hourly["respiratory_rate"], spo2=hourly["spo2"],
                            systolic_bp=hourly["systolic_bp"], heart_rate=hourly["heart_rate"],
                            temperature=hourly["temperature"], acvpu=hourly["acvpu"].to_numpy())
        windows = pd.DataFrame({HOUR: np.arange(len(hourly))[kept], "label": label[kept].astype(int),
                                "news2": news2[kept].astype(int), "stay_icu_admission": event_hour is not None})
        for column, value in zip(STAY_KEYS, key, strict=True):
            windows[column] = value
        rows.append(windows)
    frame = pd.concat(rows, ignore_index=True)[WINDOW_COLUMNS] if rows else pd.DataFrame(columns=WINDOW_COLUMNS)
    frame["stay_number"] = frame["stay_number"].astype(int)
    return DeteriorationDataset(frame.reset_index(drop=True), stays, horizon, dropped)


def split_stays(windows: pd.DataFrame, config: SplitConfig) -> SplitOutcome:
    """One row per stay with its split: grouped by person, stratified by the stay's ICU admission."""
    stays = windows.drop_duplicates(STAY_KEYS)[[*STAY_KEYS, "stay_icu_admission"]].rename(
        columns={"stay_icu_admission": "label"})
    stays["label"] = stays["label"].astype(int)
    assigned = assign_split_rows(stays.reset_index(drop=True), config)
    splits = assigned[SPLIT_COLUMNS].sort_values(STAY_KEYS).reset_index(drop=True)
    return SplitOutcome(splits, check_leakage(splits, ("patient_pseudonym",)), config, len(stays))


def windows_with_splits(windows: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """The windows that have a split, with it, in a stable order (what the dataset version hashes)."""
    frame = windows.merge(splits[[*STAY_KEYS, "split"]], on=STAY_KEYS, how="inner")
    return frame.sort_values([*STAY_KEYS, HOUR]).reset_index(drop=True)


# --- next-value regression (row V2): the same stays, the next hour's reading of one vital -----------------
FORECAST_COLUMNS = [*STAY_KEYS, HOUR, "target", "last_value", "stay_icu_admission"]


@dataclass(frozen=True)
class ForecastDataset:
    """Windows whose next hour holds a reading of ``vital``: its value is the target."""

    frame: pd.DataFrame
    vital: str
    stays: int

    def as_metadata(self) -> dict[str, Any]:
        frame = self.frame
        return {"stays": self.stays, "windows": len(frame), "target_vital": self.vital,
                "persons": int(frame["patient_pseudonym"].nunique()) if len(frame) else 0,
                "target_mean": round(float(frame["target"].mean()), 3) if len(frame) else None,
                "target_sd": round(float(frame["target"].std()), 3) if len(frame) > 1 else None}


def build_forecast_windows(vitals: pd.DataFrame, vital: str) -> ForecastDataset:
    """One window per stay-hour ``t`` whose hour ``t + 1`` has a reading of ``vital`` (the target); the value
    carried forward at ``t`` (``last_value``) is the naive forecast every model must beat."""
    if vital not in VITALS:
        raise ValueError(f"unknown vital {vital!r}; choose one of {VITALS}")
    rows: list[pd.DataFrame] = []
    stays = 0
    for key, stay in vitals.sort_values([*STAY_KEYS, HOUR]).groupby(STAY_KEYS, sort=True):
        stays += 1
        measured = stay.set_index(HOUR)[vital].astype(float)
        hourly = measured.reindex(range(int(stay[HOUR].max()) + 1))
        target = hourly.shift(-1)
        frame = pd.DataFrame({HOUR: hourly.index, "target": target.to_numpy(), "last_value": hourly.ffill().to_numpy(),
                              "stay_icu_admission": stay["icu_admission_hour"].notna().any()})
        frame = frame[frame["target"].notna()]
        for column, value in zip(STAY_KEYS, key, strict=True):
            frame[column] = value
        rows.append(frame)
    frame = pd.concat(rows, ignore_index=True)[FORECAST_COLUMNS] if rows else pd.DataFrame(columns=FORECAST_COLUMNS)
    frame["stay_number"] = frame["stay_number"].astype(int)
    return ForecastDataset(frame.reset_index(drop=True), vital, stays)
