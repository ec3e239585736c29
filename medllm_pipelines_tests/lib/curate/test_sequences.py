"""The deterioration windows: labels from the recorded event, windows without an observed future left out,
NEWS2 beside each, and stays split with no person in two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medllm_pipelines.lib.curate.sequences import build_windows, split_stays, window_labels
from medllm_pipelines.lib.curate.splits import SplitConfig


def test_an_event_labels_the_horizon_before_it_and_keeps_every_window() -> None:
    kept, label = window_labels(10, 10, 3)
    assert kept.all() and label.tolist() == [False] * 7 + [True] * 3  # t < 10 <= t + 3


def test_without_an_event_the_last_horizon_hours_are_not_windows() -> None:
    kept, label = window_labels(10, None, 3)
    assert kept.tolist() == [True] * 7 + [False] * 3 and not label.any()


def _stay(person: str, hours: int, event: float | None, heart_rate: float = 80.0) -> pd.DataFrame:
    return pd.DataFrame({"patient_pseudonym": person, "institution": "x", "stay_number": 1,
                         "hours_since_admission": range(hours), "heart_rate": heart_rate, "respiratory_rate": 16.0,
                         "spo2": 97.0, "temperature": 37.0, "systolic_bp": 120.0, "acvpu": "A",
                         "icu_admission_hour": np.nan if event is None else event})


def test_windows_carry_news2_and_a_missing_hour_is_carried_forward() -> None:
    stay = _stay("p_a", 20, 20.0, heart_rate=135.0).drop(index=[5])  # hour 5 missing: its window still exists
    dataset = build_windows(pd.concat([stay, _stay("p_b", 30, None)]), 12)
    frame = dataset.frame
    assert dataset.stays == 2 and dataset.windows_not_kept == 12
    a = frame[frame["patient_pseudonym"] == "p_a"]
    assert a["hours_since_admission"].tolist() == list(range(20)) and (a["news2"] == 3).all()
    assert a["label"].sum() == 12 and frame.loc[frame["patient_pseudonym"] == "p_b", "label"].sum() == 0


def test_no_person_is_in_two_splits() -> None:
    stays = pd.concat([_stay(f"p_{i % 15}", 20, 20.0 if i % 4 == 0 else None) for i in range(40)])
    stays["stay_number"] = np.repeat(np.arange(40) // 15 + 1, 20)
    windows = build_windows(stays, 6).frame
    outcome = split_stays(windows, SplitConfig(seed=3))
    assert outcome.report.persons_in_several_splits == 0
    assert set(outcome.splits["split"]) == {"train", "validation", "test"}
