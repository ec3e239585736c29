"""A spec's dataset version: its features joined with their split, built in one place.

The content hash of exactly this frame is the dataset version that the
preprocessing, the model, its MLflow run, the evaluation and the dataset card
all carry; building the frame twice risks two versions of one dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from medllm_pipelines.lib.common.records import frame_content_hash
from medllm_pipelines.lib.common.warehouse import Warehouse


@dataclass(frozen=True)
class SplitDataset:
    """Feature rows with a ``split`` column, sorted by person, and the version that names them."""

    frame: pd.DataFrame
    version: str

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]

    @property
    def rows_per_split(self) -> dict[str, int]:
        return {s: int((self.frame["split"] == s).sum()) for s in ("train", "validation", "test")}


def join_features_with_splits(features: pd.DataFrame, splits: pd.DataFrame, id_column: str = "patient_pseudonym") -> SplitDataset:
    """Every feature row that has a split, in a stable order; persons without a split are not in the dataset."""
    frame = features.merge(splits[[id_column, "split"]], on=id_column, how="inner")
    frame = frame.sort_values(id_column).reset_index(drop=True)
    return SplitDataset(frame=frame, version=frame_content_hash(frame))


def read_split_dataset(warehouse: Warehouse, features: tuple[str, str], splits: tuple[str, str]) -> SplitDataset:
    """The dataset from the warehouse's feature and split tables (schema, table)."""
    return join_features_with_splits(warehouse.read_table(*features), warehouse.read_table(*splits))
