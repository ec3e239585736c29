"""Sequence models (issue 11, sequences): a GRU/LSTM early-warning model over hourly vital signs.

``networks`` (nn.Module, no Lightning), ``data`` (windows -> tensors, LightningDataModule), ``systems``
(LightningModule), ``training`` (one seeded training), ``runs`` (one MLflow run of the spec).
"""
