"""Text data for the encoder: token ids from the trained tokenizer, and the Lightning data module.

Nothing is fitted here: the tokenizer was trained by train/text_tokenizer and
the splits by the curate stage. Rows of the test split are never read by the
data module (the held-out evaluation encodes them itself, after training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from medllm_pipelines.lib.train.text.networks import PAD_ID

TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT = "train", "validation", "test"


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """(n, max_length) int64 token ids, truncated and right-padded with [PAD] (id 0)."""
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)):
        kept = encoding.ids[:max_length]
        ids[row, : len(kept)] = kept
    return torch.from_numpy(ids)


def class_indices(labels: Sequence[str], classes: Sequence[str], split: str = "") -> torch.Tensor:
    """Index of each label in ``classes``; a label outside them is an error naming the split and the labels."""
    position = {label: i for i, label in enumerate(classes)}
    unknown = sorted({str(label) for label in labels if label not in position})
    if unknown:
        raise ValueError(f"{len(unknown)} labels of the {split or 'given'} rows are not classes of the spec: {unknown[:5]}")
    return torch.tensor([position[label] for label in labels], dtype=torch.int64)


class TextClassificationDataModule(L.LightningDataModule):
    """Train and validation rows of a split text table as (token ids, class index) tensors."""

    def __init__(self, frame: pd.DataFrame, tokenizer: Any, classes: Sequence[str], *, text_column: str = "text",
                 label_column: str = "label", split_column: str = "split", max_length: int = 128,
                 batch_size: int = 32, seed: int = 42) -> None:
        super().__init__()
        for column in (text_column, label_column, split_column):
            if column not in frame.columns:
                raise KeyError(f"frame lacks column {column!r}")
        self.frame = frame
        self.tokenizer = tokenizer
        self.classes = list(classes)
        self.text_column, self.label_column, self.split_column = text_column, label_column, split_column
        self.max_length = max_length
        self.batch_size = batch_size
        self.seed = seed
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    def rows(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame[self.split_column] == split]

    def tensors(self, split: str) -> TensorDataset:
        rows = self.rows(split)
        return TensorDataset(encode_texts(self.tokenizer, rows[self.text_column].tolist(), self.max_length),
                             class_indices(rows[self.label_column].tolist(), self.classes, split))

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, validation = self.rows(TRAIN_SPLIT), self.rows(VALIDATION_SPLIT)
        if len(train) == 0 or len(validation) == 0:
            raise ValueError(f"need rows with {self.split_column}={TRAIN_SPLIT!r} and {VALIDATION_SPLIT!r}; "
                             f"got {len(train)} and {len(validation)}")
        if train[self.label_column].nunique() < 2:
            raise ValueError("the training split holds only one class; a classifier cannot be fitted")
        self.train_dataset = self.tensors(TRAIN_SPLIT)
        self.val_dataset = self.tensors(VALIDATION_SPLIT)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, 256), shuffle=False)
