"""Windows of hourly vitals as tensors, and the LightningDataModule of the deterioration dataset.

Per stay, one row per hour since admission with, per vital, the reading carried
forward (z-scored with the training split's means and deviations; 0 before the
first reading) and a channel saying whether it was measured that hour; ACVPU as
its level (A=0 .. U=4, scaled to [0, 1]); the hour since admission / 72. A
window ending at hour ``t`` is the last ``window_hours`` rows up to ``t``,
left-padded with zeros and a "present" channel that says which rows are real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from medllm_pipelines.lib.curate.news2 import ACVPU_LEVELS
from medllm_pipelines.lib.curate.sequences import HOUR, STAY_KEYS, VITALS

TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT = "train", "validation", "test"
HOUR_SCALE = 72.0
CHANNELS = (*VITALS, "acvpu_level", *(f"{v}_measured" for v in (*VITALS, "acvpu")), "hour", "present")


@dataclass(frozen=True)
class VitalsScaler:
    """Means and deviations of the vitals over the training split's rows (fitted there only)."""

    means: tuple[float, ...]
    scales: tuple[float, ...]

    @classmethod
    def fit(cls, vitals: pd.DataFrame) -> VitalsScaler:
        values = vitals[list(VITALS)].astype(float)
        means = values.mean().fillna(0.0)
        scales = values.std().fillna(1.0).replace(0.0, 1.0)
        return cls(tuple(float(v) for v in means), tuple(float(v) for v in scales))

    def as_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in asdict(self).items()}


def stay_matrix(stay: pd.DataFrame, scaler: VitalsScaler) -> np.ndarray:
    """(hours, channels - 1) features of one stay's rows (``deidentify/vital_signs``), hour 0 .. last."""
    last = int(stay[HOUR].max())
    event = stay["icu_admission_hour"].dropna() if "icu_admission_hour" in stay else pd.Series(dtype=float)
    if len(event):
        last = max(last, int(event.iloc[0]) - 1)
    hourly = stay.set_index(HOUR).reindex(range(last + 1))
    measured = hourly[[*VITALS, "acvpu"]].notna().to_numpy(dtype=np.float32)
    values = hourly[list(VITALS)].astype(float).ffill().to_numpy()
    values = (values - np.array(scaler.means)) / np.array(scaler.scales)
    level = hourly["acvpu"].map({code: i for i, code in enumerate(ACVPU_LEVELS)}).astype(float).ffill()
    hours = np.arange(last + 1, dtype=float)[:, None] / HOUR_SCALE
    matrix = np.concatenate([np.nan_to_num(values), np.nan_to_num(level.to_numpy()[:, None] / 4.0), measured, hours],
                            axis=1)
    return matrix.astype(np.float32)


def window_tensor(vitals: pd.DataFrame, windows: pd.DataFrame, scaler: VitalsScaler, window_hours: int) -> torch.Tensor:
    """(windows, window_hours, channels) for the rows of ``windows`` (stay keys + hour), in their order."""
    out = np.zeros((len(windows), window_hours, len(CHANNELS)), dtype=np.float32)
    if not len(windows):
        return torch.from_numpy(out)
    matrices = {key: stay_matrix(stay, scaler) for key, stay in vitals.groupby(STAY_KEYS, sort=False)}
    for row, (key, hour) in enumerate(zip(windows[STAY_KEYS].itertuples(index=False, name=None), windows[HOUR],
                                          strict=True)):
        matrix = matrices[tuple(key)]
        start = max(0, int(hour) - window_hours + 1)
        rows = matrix[start:int(hour) + 1]
        out[row, window_hours - len(rows):, :-1] = rows
        out[row, window_hours - len(rows):, -1] = 1.0
    return torch.from_numpy(out)


def split_tensors(vitals: pd.DataFrame, windows: pd.DataFrame, scaler: VitalsScaler, window_hours: int,
                  split: str, target_column: str = "label") -> TensorDataset:
    rows = windows[windows["split"] == split]
    return TensorDataset(window_tensor(vitals, rows, scaler, window_hours),
                         torch.tensor(rows[target_column].to_numpy(dtype=np.float32)))


class DeteriorationDataModule(L.LightningDataModule):
    """Train/validation/test window tensors; the scaler is fitted on the training stays' rows only.

    ``target_column``: ``label`` (deterioration, 0/1) or ``target`` (next-value regression)."""

    def __init__(self, vitals: pd.DataFrame, windows: pd.DataFrame, *, window_hours: int, batch_size: int,
                 seed: int, target_column: str = "label") -> None:
        super().__init__()
        self.vitals, self.windows, self.target_column = vitals, windows, target_column
        self.window_hours, self.batch_size, self.seed = window_hours, batch_size, seed
        train_stays = windows.loc[windows["split"] == TRAIN_SPLIT, STAY_KEYS].drop_duplicates()
        self.scaler = VitalsScaler.fit(vitals.merge(train_stays, on=STAY_KEYS))
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset, self.test_dataset = (
                split_tensors(self.vitals, self.windows, self.scaler, self.window_hours, split, self.target_column)
                for split in (TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT))

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None
        return DataLoader(self.val_dataset, batch_size=1024)

    def targets(self, split: str) -> Sequence[float]:
        return self.windows.loc[self.windows["split"] == split, self.target_column].astype(float).tolist()
