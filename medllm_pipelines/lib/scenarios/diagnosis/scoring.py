"""The T2D model scored per request without pandas, and its exact Shapley values in one forward pass.

Why not ``TabularPredictor.predict_proba``: its scikit-learn pipeline costs about
11 ms for one row (pandas and input validation in every step), four times the
whole request's budget. For a row whose numeric inputs are all present the fitted
preprocessing (declared missing-value policy, median imputation, z-score or
min-max scaling, one-hot encoding, feature selection, PCA) is affine in the numeric
values plus one vector per categorical value, so :class:`CompiledPredictor` reads that
map off the pipeline itself once (probe rows through ``pipeline.transform``) and
checks it reproduces the pipeline on random rows; if it does not (a step that is
not affine), every call goes through the pipeline instead. Rows with missing values
are first imputed by the pipeline's own numeric imputation steps (pandas, ~3 ms:
the declared policy is model-based), then scored the fast way.

Shapley values (:class:`ShapleyExplainer`) are exact: every coalition of the raw
inputs (2^n, n <= 14) against a baseline - the background rows given, averaged
(interventional Shapley), or, without background, the preprocessing's fitted
medians with categorical inputs missing (what the model is fed for a patient about
whom nothing is known). In the encoded space a coalition is
``encode(b) + mask @ D`` with D the per-input differences, so all coalitions of
all background rows are one matrix product and one network call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from medllm_pipelines.lib.curate.preprocessing import MISSING_CATEGORY
from medllm_pipelines.lib.train.predictor import TabularPredictor

__all__ = ["CompiledPredictor", "RawRow", "ShapleyExplainer", "coalition_plan", "shapley_from_values"]

MAX_EXACT_PLAYERS = 14
UNSEEN = "\x00unseen"  # a category the encoder never saw: one-hot all zeros (handle_unknown="ignore")
AFFINE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class RawRow:
    """One patient's model inputs after imputation: numeric values (complete) and categorical values."""

    numeric: np.ndarray  # (k,) float64, in preprocessing.spec.numeric_columns order
    categorical: tuple[str, ...]
    imputed: tuple[str, ...]  # numeric columns the preprocessing filled


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class CompiledPredictor:
    """``predictor.predict_proba`` on raw values as numpy operations; falls back to the pipeline when not affine."""

    def __init__(self, predictor: TabularPredictor, *, check_rows: int = 64, seed: int = 0) -> None:
        self.predictor = predictor
        self._numpy_network: Any = None  # built on first use: numpy_mlp or False (torch)
        preprocessing = predictor.preprocessing
        self.numeric_columns = list(preprocessing.spec.numeric_columns)
        self.categorical_columns = list(preprocessing.spec.categorical_columns)
        described = preprocessing.describe()
        self.fill_values = np.array([described["imputation_values"][c] for c in self.numeric_columns], dtype=np.float64)
        self.categories = {c: [*described["categories"].get(c, []), UNSEEN] for c in self.categorical_columns}
        self.category_index = {c: {v: i for i, v in enumerate(values)} for c, values in self.categories.items()}
        numeric_steps = preprocessing.pipeline.named_steps["columns"].named_transformers_["numeric"]
        names = [name for name, _ in numeric_steps.steps]
        # the numeric branch up to (and including) its last imputer: what fills a missing value
        self._imputer = numeric_steps[: names.index("impute") + 1] if "impute" in names else None
        self._probe()
        self.affine = self._check(check_rows, seed)

    # ------------------------------------------------------------------ the affine map
    def raw_frame(self, numeric: np.ndarray, categorical: Sequence[Sequence[Any]]) -> pd.DataFrame:
        frame = pd.DataFrame(np.asarray(numeric, dtype=np.float64).reshape(len(categorical), -1),
                             columns=self.numeric_columns)
        for j, column in enumerate(self.categorical_columns):
            frame[column] = pd.Series([row[j] for row in categorical], dtype=object)
        return frame

    def _pipeline(self, numeric: np.ndarray, categorical: Sequence[Sequence[Any]]) -> np.ndarray:
        return np.asarray(self.predictor.preprocessing.pipeline.transform(self.raw_frame(numeric, categorical)),
                          dtype=np.float64)

    def _probe(self) -> None:
        base_num = self.fill_values
        base_cat = tuple(values[0] for values in self.categories.values())
        steps = np.maximum(1.0, np.abs(base_num))
        rows_num = [base_num] + [base_num + steps[j] * np.eye(len(base_num))[j] for j in range(len(base_num))]
        rows_cat = [base_cat] * len(rows_num)
        for j, column in enumerate(self.categorical_columns):
            for value in self.categories[column]:
                rows_num.append(base_num)
                rows_cat.append(tuple(value if i == j else v for i, v in enumerate(base_cat)))
        out = self._pipeline(np.vstack(rows_num), rows_cat)
        self.base_numeric = base_num
        self.base_out = out[0]
        k = len(base_num)
        self.jacobian = ((out[1:k + 1] - out[0]) / steps[:, None]).T  # (d, k)
        self.category_effects: dict[str, np.ndarray] = {}
        position = k + 1
        for column in self.categorical_columns:
            n = len(self.categories[column])
            self.category_effects[column] = out[position:position + n] - out[0]  # (n_values, d), base value's row = 0
            position += n

    def _check(self, n: int, seed: int) -> bool:
        rng = np.random.default_rng(seed)
        spread = np.maximum(1.0, np.abs(self.fill_values))
        numeric = self.fill_values + rng.uniform(-0.5, 0.5, (n, len(self.fill_values))) * spread
        categorical = [tuple(rng.choice(self.categories[c][:-1] or [UNSEEN]) for c in self.categorical_columns)
                       for _ in range(n)]
        expected = self._pipeline(numeric, categorical)
        codes = np.array([[self.category_index[c][v] for c, v in zip(self.categorical_columns, row, strict=True)]
                          for row in categorical], dtype=np.int64).reshape(n, len(self.categorical_columns))
        return bool(np.allclose(self.encode(numeric, codes), expected, atol=AFFINE_TOLERANCE, rtol=0.0))

    def category_codes(self, categorical: Sequence[Any]) -> np.ndarray:
        """Row indices into the category effects; a missing value is what the pipeline imputes, unknown -> zeros."""
        out = []
        for column, value in zip(self.categorical_columns, categorical, strict=True):
            value = MISSING_CATEGORY if value is None else str(value)
            out.append(self.category_index[column].get(value, self.category_index[column][UNSEEN]))
        return np.asarray(out, dtype=np.int64)

    def encode(self, numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n, d) network inputs of complete rows: numeric (n, k) raw values, codes (n, m) category indices."""
        encoded = self.base_out + (np.asarray(numeric, dtype=np.float64) - self.base_numeric) @ self.jacobian.T
        for j, column in enumerate(self.categorical_columns):
            encoded = encoded + self.category_effects[column][codes[:, j]]
        return encoded

    def network_proba(self, encoded: np.ndarray) -> np.ndarray:
        """Probabilities of encoded rows: the network in float32, as ``transform_array`` feeds it."""
        inputs = np.ascontiguousarray(encoded, dtype=np.float32)
        if self._numpy_network is None:
            self._numpy_network = numpy_mlp(self.predictor.network, inputs)
        if self._numpy_network:
            return self._numpy_network(inputs)
        with torch.no_grad():
            logits = self.predictor.network(torch.from_numpy(inputs))
        return torch.sigmoid(logits).reshape(-1).numpy().astype(np.float64)

    # ------------------------------------------------------------------ rows
    def raw_row(self, features: Mapping[str, Any]) -> RawRow:
        """The model's input row, missing numeric values imputed by the fitted preprocessing's own steps."""
        numeric = np.array([np.nan if _absent(features.get(c)) else float(features[c]) for c in self.numeric_columns],
                           dtype=np.float64)
        categorical = tuple(None if _absent(features.get(c)) else features.get(c) for c in self.categorical_columns)
        missing = np.isnan(numeric)
        if missing.any():
            numeric = self.impute(numeric[None, :])[0]
        return RawRow(numeric, categorical, tuple(c for c, m in zip(self.numeric_columns, missing, strict=True) if m))

    def impute(self, numeric: np.ndarray) -> np.ndarray:
        """(n, k) numeric rows with NaN -> as the preprocessing fills them (model-based policy, then medians)."""
        if self._imputer is None or not np.isnan(numeric).any():
            return np.where(np.isnan(numeric), self.fill_values, numeric)
        frame = pd.DataFrame(np.asarray(numeric, dtype=np.float64), columns=self.numeric_columns)
        return np.asarray(self._imputer.transform(frame), dtype=np.float64)

    def probability(self, row: RawRow) -> float:
        if not self.affine:
            return float(self.predictor.predict_proba(self.raw_frame(row.numeric[None, :], [row.categorical]))[0])
        return float(self.network_proba(self.encode(row.numeric[None, :], self.category_codes(row.categorical)[None, :]))[0])


def coalition_plan(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every coalition of n players as a 0/1 matrix (row s = bits of s) and, per player, the pairs that differ by it.

    Returns masks (2^n, n), with_player (n, 2^(n-1)), without_player (n, 2^(n-1)) and the Shapley weights
    |S|! (n-|S|-1)! / n! of each pair (n, 2^(n-1)).
    """
    if not 1 <= n <= MAX_EXACT_PLAYERS:
        raise ValueError(f"exact Shapley values need 1..{MAX_EXACT_PLAYERS} inputs, got {n}")
    subsets = np.arange(2**n)
    masks = ((subsets[:, None] >> np.arange(n)) & 1).astype(np.float64)
    sizes = masks.sum(axis=1).astype(int)
    weight_of_size = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    without = np.stack([subsets[(subsets >> i) & 1 == 0] for i in range(n)])
    with_ = without | (1 << np.arange(n))[:, None]
    return masks, with_, without, weight_of_size[sizes[without]]


def shapley_from_values(values: np.ndarray, plan: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """phi_i = sum over S not holding i of w(|S|) (v(S + i) - v(S)); ``values`` indexed by coalition bits."""
    _, with_, without, weights = plan
    return ((values[with_] - values[without]) * weights).sum(axis=1)


class ShapleyExplainer:
    """Exact Shapley values of the predicted probability over the model's raw inputs."""

    def __init__(self, compiled: CompiledPredictor, background: pd.DataFrame | None = None, *,
                 max_background: int = 64, seed: int = 0) -> None:
        self.compiled = compiled
        self.players = [*compiled.numeric_columns, *compiled.categorical_columns]
        self.plan = coalition_plan(len(self.players))
        if background is None or len(background) == 0:
            self.background_kind = "fitted_medians"
            numeric = compiled.fill_values[None, :]
            categorical = [tuple(None for _ in compiled.categorical_columns)]
        else:
            missing = [c for c in self.players if c not in background.columns]
            if missing:
                raise ValueError(f"the background lacks model inputs: {missing}")
            if len(background) > max_background:  # bounded cost: 2^n x rows network inputs per explanation
                background = background.sample(n=max_background, random_state=seed)
            self.background_kind = f"background_rows:{len(background)}"
            raw = background[compiled.numeric_columns].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
            numeric = compiled.impute(raw)
            categorical = [tuple(None if pd.isna(v) else v for v in row)
                           for row in background[compiled.categorical_columns].itertuples(index=False)]
        self.background_numeric = numeric
        self.background_codes = np.stack([compiled.category_codes(row) for row in categorical]).reshape(
            len(categorical), len(compiled.categorical_columns))
        self.background_categorical = categorical
        if compiled.affine:
            self.background_encoded = compiled.encode(numeric, self.background_codes)  # (B, d)
            self.baseline_probability = float(compiled.network_proba(self.background_encoded).mean())
        else:
            frame = compiled.raw_frame(numeric, categorical)
            self.baseline_probability = float(compiled.predictor.predict_proba(frame).mean())

    def _differences(self, row: RawRow, codes: np.ndarray) -> np.ndarray:
        """(B, n_players, d): what switching each input from the background row's value to the patient's adds."""
        compiled = self.compiled
        numeric = (row.numeric[None, :] - self.background_numeric)[:, :, None] * compiled.jacobian.T[None, :, :]
        parts = [numeric]
        for j, column in enumerate(compiled.categorical_columns):
            effects = compiled.category_effects[column]
            parts.append((effects[codes[j]][None, :] - effects[self.background_codes[:, j]])[:, None, :])
        return np.concatenate(parts, axis=1)

    def coalition_values(self, row: RawRow) -> np.ndarray:
        """v(S) for every coalition S (indexed by its bits): mean probability over the background rows."""
        compiled = self.compiled
        masks = self.plan[0]
        if compiled.affine:
            codes = compiled.category_codes(row.categorical)
            encoded = self.background_encoded[:, None, :] + np.einsum("sp,bpd->bsd", masks, self._differences(row, codes))
            probabilities = compiled.network_proba(encoded.reshape(-1, encoded.shape[-1]))
            return probabilities.reshape(len(self.background_numeric), len(masks)).mean(axis=0)
        return self._pipeline_values(row, masks)

    def _pipeline_values(self, row: RawRow, masks: np.ndarray) -> np.ndarray:
        """The same through the pipeline (slow: only when the preprocessing is not affine)."""
        compiled = self.compiled
        k = len(compiled.numeric_columns)
        totals = np.zeros(len(masks))
        for b, background_cat in enumerate(self.background_categorical):
            numeric = np.where(masks[:, :k] > 0, row.numeric, self.background_numeric[b])
            categorical = [tuple(row.categorical[j] if mask[k + j] else background_cat[j]
                                 for j in range(len(compiled.categorical_columns))) for mask in masks]
            totals += compiled.predictor.predict_proba(compiled.raw_frame(numeric, categorical))
        return totals / len(self.background_categorical)

    def explain(self, row: RawRow) -> tuple[np.ndarray, float, float]:
        """(Shapley value per player, v(all) = the probability, v(none) = the baseline probability)."""
        values = self.coalition_values(row)
        return shapley_from_values(values, self.plan), float(values[-1]), float(values[0])


_NUMPY_ACTIVATIONS: dict[type, Any] = {
    torch.nn.ReLU: lambda x: np.maximum(x, 0.0, dtype=np.float32),
    torch.nn.Tanh: np.tanh,
}


def numpy_mlp(network: torch.nn.Module, probe: np.ndarray) -> Any:
    """The eval-mode MLP (Linear, ReLU/Tanh, Dropout) as float32 numpy matrix products, or False.

    One row through nn.Module costs ~0.2 ms of Python dispatch per request; the same products in numpy ~20 us.
    Checked against the network on ``probe`` (and 32 perturbed rows) before it is used; any other layer (GELU)
    or a difference above 1e-6 keeps torch.
    """
    layers: list[tuple[np.ndarray, np.ndarray] | Any] = []
    for module in network.modules():
        if module is network or isinstance(module, torch.nn.Sequential | torch.nn.Dropout):
            continue
        if isinstance(module, torch.nn.Linear):
            layers.append((module.weight.detach().numpy().T.astype(np.float32).copy(),
                           module.bias.detach().numpy().astype(np.float32).copy()))
        elif type(module) in _NUMPY_ACTIVATIONS:
            layers.append(_NUMPY_ACTIVATIONS[type(module)])
        else:
            return False

    def forward(inputs: np.ndarray) -> np.ndarray:
        x = inputs
        for layer in layers:
            x = x @ layer[0] + layer[1] if isinstance(layer, tuple) else layer(x)
        logits = x.reshape(-1).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))

    noise = np.random.default_rng(0).normal(0, 1, (32, probe.shape[1]))
    rows = np.concatenate([probe, probe[:1] + noise]).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(rows))).reshape(-1).numpy().astype(np.float64)
    return forward if np.allclose(forward(rows), expected, atol=1e-6, rtol=0.0) else False
