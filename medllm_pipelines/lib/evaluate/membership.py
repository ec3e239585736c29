"""The privacy of the models themselves: membership inference and canary exposure (issue 12, item 9).

Membership inference, loss-threshold attack (Yeom et al. 2018, "Privacy risk
in machine learning"): a model fits its training rows better than rows it
never saw, so an attacker who can compute an example's loss guesses "member"
when the loss is low. Given per-example losses on training members and on
held-out non-members of the same distribution:

- attack AUC: ROC-AUC of ``-loss`` as the membership score (members are the
  positive class), with a bootstrap interval stratified by membership (both
  sets keep their size in every draw). 0.5 means the losses tell nothing
  about membership; 1.0 means every member has a lower loss than every
  non-member.
- advantage (Yeom's membership advantage, TPR - FPR): at the best threshold
  over the losses seen (an optimistic, in-sample choice: the strongest
  single-threshold attacker) and at Yeom's own threshold, the mean training
  loss, which the attacker can know without any non-member data.

Loss helpers give per-example losses per task: binary (log loss of the
positive-class probability), multiclass (-log p[true class]), regression
(squared error) and a causal LM (mean token negative log-likelihood per
sequence). Probabilities are clipped to [eps, 1 - eps] (float64 eps) as scikit-learn's
``log_loss`` does, so a confidently wrong prediction has a large finite loss.

Canary exposure (Carlini et al. 2019, "The Secret Sharer"): random secrets in
a fixed template ("my code is {d}{d}{d}{d}{d}{d}") are planted k times in the
generator's training text; after training, the canary's log-perplexity is
ranked among candidate secrets of the same template. Exposure = log2|R| -
log2(rank), |R| the number of candidates (the canary included) and rank 1 the
lowest perplexity; ties take the mid rank (a model that gives every secret
the same probability has exposure about 1 bit, not the maximum). When the
candidates are the whole space (10^d) this is the paper's exact exposure.
For a 6-digit space the candidates are a uniform sample (10,000 by default)
and the value estimates -log2 P(a random secret is at most as likely as the
canary), capped at log2(10,001) ~ 13.3 bits; the paper's extrapolation
(Section 4.3: a skew-normal fitted to the candidates' log-perplexities, the
exposure read off its CDF) is reported beside it, capped at log2|R| (rank 1
in the whole space), which the fitted tail can otherwise overshoot. A secret
never planted has exposure ~ 1/ln 2 ~ 1.4 bits on average; a memorised one
approaches log2|R| (19.9 bits for a 6-digit space).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from medllm_pipelines.lib.evaluate.intervals import bootstrap_intervals
from medllm_pipelines.lib.evaluate.metrics import roc_auc_or_none

__all__ = [
    "DEFAULT_CANARY_FORMAT",
    "CanaryExposure",
    "MembershipInference",
    "PlantedCanaries",
    "binary_log_losses",
    "canary_space_size",
    "causal_lm_sequence_log_probs",
    "causal_lm_text_logprob_fn",
    "causal_lm_sequence_losses",
    "exposure",
    "fill_canary",
    "membership_inference",
    "multiclass_log_losses",
    "plant_canaries",
    "regression_squared_errors",
    "sample_canary_candidates",
]

PROBABILITY_CLIP = float(np.finfo(np.float64).eps)
DIGIT_SLOT = "{d}"
DEFAULT_CANARY_FORMAT = "my code is {d}{d}{d}{d}{d}{d}"


# --- per-example losses ----------------------------------------------------------------------------------------


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def binary_log_losses(y_true: Any, y_score: Any) -> np.ndarray:
    """-[y log p + (1 - y) log(1 - p)] per row, p the positive-class probability (clipped as scikit-learn does)."""
    truth = np.asarray(y_true)
    score = _finite(np.asarray(y_score, dtype=np.float64), "y_score")
    if truth.shape != score.shape or truth.ndim != 1:
        raise ValueError(f"y_true and y_score must be one-dimensional of equal length: {truth.shape}, {score.shape}")
    if score.min(initial=0.0) < 0.0 or score.max(initial=1.0) > 1.0:
        raise ValueError("y_score must be probabilities in [0, 1]")
    if not np.isin(truth, [0, 1]).all():
        raise ValueError("y_true must hold only 0 and 1")
    p = np.clip(score, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return -(truth * np.log(p) + (1 - truth) * np.log1p(-p))


def multiclass_log_losses(y_true: Any, probabilities: Any) -> np.ndarray:
    """-log p[true class] per row of a (rows, classes) probability matrix (clipped as scikit-learn does)."""
    truth = np.asarray(y_true)
    proba = _finite(np.asarray(probabilities, dtype=np.float64), "probabilities")
    if proba.ndim != 2 or truth.ndim != 1 or len(truth) != len(proba):
        raise ValueError("probabilities must be (rows, classes) and y_true one class index per row")
    if not np.issubdtype(truth.dtype, np.integer) or truth.min(initial=0) < 0 or truth.max(initial=0) >= proba.shape[1]:
        raise ValueError(f"y_true must hold class indices 0..{proba.shape[1] - 1}")
    if proba.min(initial=0.0) < 0.0 or not np.allclose(proba.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probabilities must be non-negative and sum to 1 (softmax outputs, not logits)")
    return -np.log(np.clip(proba[np.arange(len(truth)), truth], PROBABILITY_CLIP, 1.0))


def regression_squared_errors(y_true: Any, y_pred: Any) -> np.ndarray:
    """(y - y_hat)^2 per row: the regression loss whose mean is the MSE."""
    truth = _finite(np.asarray(y_true, dtype=np.float64), "y_true")
    pred = _finite(np.asarray(y_pred, dtype=np.float64), "y_pred")
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(f"y_true and y_pred must be one-dimensional of equal length, got {truth.shape}, {pred.shape}")
    return (truth - pred) ** 2


def causal_lm_sequence_log_probs(
    network: torch.nn.Module, sequences: Sequence[Sequence[int]], *, batch_size: int = 64, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(token_t | tokens_<t) over t >= 1 for each token sequence, and the count of those tokens.

    ``network`` maps (batch, length) ids to (batch, length, vocab) logits (the project's GPT). The first token of
    each sequence (BOS, for instance) is only conditioned on. Sequences are right-padded per batch with
    ``pad_id``; the padded positions are masked out, and causal attention keeps them from affecting the rest.
    """
    if not sequences:
        raise ValueError("no sequences to score")
    lengths = [len(sequence) for sequence in sequences]
    if min(lengths) < 2:
        raise ValueError("every sequence needs at least two tokens (one to condition on, one to score)")
    block = getattr(getattr(network, "config", None), "block_size", None)
    if block is not None and max(lengths) > block:
        raise ValueError(f"a sequence of {max(lengths)} tokens is longer than the network's block size {block}")
    was_training = network.training
    network.eval()
    sums: list[float] = []
    counts: list[int] = []
    device = next(network.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width - 1), dtype=torch.bool)
                for row, sequence in enumerate(batch):
                    ids[row, :len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
                    mask[row, :len(sequence) - 1] = True
                ids = ids.to(device)
                logits = network(ids[:, :-1]).float()
                log_probs = F.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0].cpu()
                sums += (log_probs * mask).sum(dim=1).double().tolist()
                counts += mask.sum(dim=1).tolist()
    finally:
        network.train(was_training)
    return np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.int64)


def causal_lm_sequence_losses(
    network: torch.nn.Module, sequences: Sequence[Sequence[int]], *, batch_size: int = 64, pad_id: int = 0
) -> np.ndarray:
    """Mean next-token negative log-likelihood per sequence (nats per scored token): the LM's per-example loss."""
    log_probs, counts = causal_lm_sequence_log_probs(network, sequences, batch_size=batch_size, pad_id=pad_id)
    return -log_probs / counts


# --- membership inference --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipInference:
    """The loss-threshold attack's result on one model: AUC with its interval, and the attacker's advantage."""

    auc: float
    auc_interval: tuple[float, float] | None
    level: float
    n_boot: int
    best_advantage: float
    best_threshold: float
    yeom_advantage: float
    yeom_threshold: float
    n_members: int
    n_nonmembers: int
    mean_member_loss: float
    mean_nonmember_loss: float
    interval_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "attack": "loss-threshold (Yeom et al. 2018)",
            "auc": self.auc,
            "auc_interval": None if self.auc_interval is None else list(self.auc_interval),
            "level": self.level,
            "n_boot": self.n_boot,
            "best_advantage": self.best_advantage,
            "best_threshold": self.best_threshold,
            "yeom_advantage": self.yeom_advantage,
            "yeom_threshold": self.yeom_threshold,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "mean_member_loss": self.mean_member_loss,
            "mean_nonmember_loss": self.mean_nonmember_loss,
            "interval_reason": self.interval_reason,
        }

    def as_metadata(self) -> dict[str, Any]:
        low, high = self.auc_interval if self.auc_interval is not None else (None, None)
        return {"membership_inference_auc": self.auc, "membership_inference_auc_low": low,
                "membership_inference_auc_high": high, "membership_inference_advantage": self.best_advantage,
                "membership_inference_n_members": self.n_members,
                "membership_inference_n_nonmembers": self.n_nonmembers}


def _advantage_at(member: np.ndarray, nonmember: np.ndarray, threshold: float) -> float:
    """TPR - FPR of "member when loss <= threshold"."""
    return float(np.mean(member <= threshold) - np.mean(nonmember <= threshold))


def _best_advantage(member: np.ndarray, nonmember: np.ndarray) -> tuple[float, float]:
    """The largest TPR - FPR over every threshold at an observed loss (or below all: advantage 0)."""
    losses = np.concatenate([member, nonmember])
    is_member = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    order = np.argsort(losses, kind="mergesort")
    sorted_losses = losses[order]
    tpr = np.cumsum(is_member[order]) / len(member)
    fpr = np.cumsum(1 - is_member[order]) / len(nonmember)
    closes = np.r_[np.diff(sorted_losses) != 0, True]  # a threshold admits every row of equal loss
    advantage = (tpr - fpr)[closes]
    best = int(np.argmax(advantage))
    if advantage[best] <= 0.0:
        return 0.0, float(sorted_losses[0]) - 1.0
    return float(advantage[best]), float(sorted_losses[closes][best])


def _membership_auc(is_member: np.ndarray, losses: np.ndarray) -> float | None:
    return roc_auc_or_none(is_member, -losses)


def membership_inference(
    member_losses: Any,
    nonmember_losses: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> MembershipInference:
    """The loss-threshold attack from per-example losses on training members and on held-out non-members.

    The non-members must come from the same distribution (e.g. the test split), or the attack measures the
    distribution shift instead of memorisation. The interval is a percentile bootstrap stratified by membership.
    """
    member = _finite(np.asarray(member_losses, dtype=np.float64).ravel(), "member_losses")
    nonmember = _finite(np.asarray(nonmember_losses, dtype=np.float64).ravel(), "nonmember_losses")
    if len(member) < 2 or len(nonmember) < 2:
        raise ValueError(f"need at least two members and two non-members, got {len(member)} and {len(nonmember)}")
    losses = np.concatenate([member, nonmember])
    is_member = np.r_[np.ones(len(member), dtype=np.int64), np.zeros(len(nonmember), dtype=np.int64)]
    auc = _membership_auc(is_member, losses)
    assert auc is not None  # both classes are present by construction
    interval = bootstrap_intervals(_membership_auc, is_member, losses, n_boot=n_boot, seed=seed, level=level,
                                   methods=("percentile",), stratify=is_member)["value"]
    best_advantage, best_threshold = _best_advantage(member, nonmember)
    yeom_threshold = float(member.mean())
    return MembershipInference(
        auc=auc,
        auc_interval=interval.percentile,
        level=level,
        n_boot=n_boot,
        best_advantage=best_advantage,
        best_threshold=best_threshold,
        yeom_advantage=_advantage_at(member, nonmember, yeom_threshold),
        yeom_threshold=yeom_threshold,
        n_members=len(member),
        n_nonmembers=len(nonmember),
        mean_member_loss=float(member.mean()),
        mean_nonmember_loss=float(nonmember.mean()),
        interval_reason=interval.reasons.get("percentile"),
    )


# --- canaries --------------------------------------------------------------------------------------------------


def _slots(canary_format: str) -> int:
    slots = canary_format.count(DIGIT_SLOT)
    if slots == 0:
        raise ValueError(f"the canary format needs at least one {DIGIT_SLOT} slot, got {canary_format!r}")
    rest = canary_format.replace(DIGIT_SLOT, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"the canary format may only hold {DIGIT_SLOT} slots, got {canary_format!r}")
    return slots


def canary_space_size(canary_format: str = DEFAULT_CANARY_FORMAT) -> int:
    """|R|: how many secrets the template can hold (10 per digit slot)."""
    return 10 ** _slots(canary_format)


def fill_canary(canary_format: str, secret: str) -> str:
    """The template with its digit slots filled, in order, by the digits of ``secret``."""
    slots = _slots(canary_format)
    if len(secret) != slots or not secret.isdigit():
        raise ValueError(f"the secret must be {slots} digits, got {len(secret)} characters")
    pieces = canary_format.split(DIGIT_SLOT)
    return "".join(piece + digit for piece, digit in zip(pieces, secret)) + pieces[-1]


def _random_secrets(slots: int, count: int, rng: np.random.Generator, exclude: set[str]) -> list[str]:
    space = 10 ** slots
    if count > space - len(exclude):
        raise ValueError(f"asked for {count} distinct secrets; the space holds {space} minus {len(exclude)} excluded")
    chosen: list[str] = []
    seen = set(exclude)
    while len(chosen) < count:
        for number in rng.integers(0, space, size=max(16, 2 * (count - len(chosen)))):
            secret = str(int(number)).zfill(slots)
            if secret not in seen:
                seen.add(secret)
                chosen.append(secret)
                if len(chosen) == count:
                    break
    return chosen


def sample_canary_candidates(
    canary_format: str = DEFAULT_CANARY_FORMAT, n: int = 10_000, *, seed: int = 0, exclude: Sequence[str] = ()
) -> list[str]:
    """``n`` distinct random filled templates, no excluded secret among them (all of them when n >= |R| - excluded)."""
    slots = _slots(canary_format)
    excluded = {str(secret) for secret in exclude}
    space = 10 ** slots
    if n >= space - len(excluded):
        secrets = [str(number).zfill(slots) for number in range(space) if str(number).zfill(slots) not in excluded]
    else:
        secrets = _random_secrets(slots, n, np.random.default_rng(seed), excluded)
    return [fill_canary(canary_format, secret) for secret in secrets]


@dataclass(frozen=True)
class PlantedCanaries:
    """Training texts with canaries in them, the planted canaries and where each went (for the record)."""

    texts: list[str]
    canary_format: str
    secrets: list[str]
    repeats: int
    positions: dict[str, list[int]] = field(default_factory=dict)  # secret -> indices of the texts that hold it

    @property
    def canaries(self) -> list[str]:
        return [fill_canary(self.canary_format, secret) for secret in self.secrets]

    def as_metadata(self) -> dict[str, Any]:
        """How many canaries went in, never the secrets themselves (they stay with the test that plants them)."""
        return {"canary_format": self.canary_format, "canaries_planted": len(self.secrets),
                "canary_repeats": self.repeats, "canary_space_size": canary_space_size(self.canary_format)}


def plant_canaries(
    texts: Sequence[str],
    n: int,
    canary_format: str = DEFAULT_CANARY_FORMAT,
    seed: int = 0,
    *,
    repeats: int = 1,
    exclude: Sequence[str] = (),
) -> PlantedCanaries:
    """``n`` random secrets, each inserted as its own line into ``repeats`` distinct training texts.

    The line goes between two existing lines chosen at random (or at either end), so the text around it is the
    training text's own. Secrets in ``exclude`` (e.g. held-back control canaries) are never planted.
    """
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be at least 1")
    if repeats > len(texts):
        raise ValueError(f"cannot insert a canary into {repeats} distinct texts out of {len(texts)}")
    rng = np.random.default_rng(seed)
    secrets = _random_secrets(_slots(canary_format), n, rng, {str(s) for s in exclude})
    planted = list(texts)
    positions: dict[str, list[int]] = {}
    for secret in secrets:
        line = fill_canary(canary_format, secret)
        targets = sorted(int(i) for i in rng.choice(len(planted), size=repeats, replace=False))
        positions[secret] = targets
        for index in targets:
            lines = planted[index].split("\n")
            at = int(rng.integers(0, len(lines) + 1))
            planted[index] = "\n".join([*lines[:at], line, *lines[at:]])
    return PlantedCanaries(planted, canary_format, secrets, repeats, positions)


@dataclass(frozen=True)
class CanaryExposure:
    """Exposure of one canary: rank-based (exact over the whole space, estimated over a sample) and extrapolated."""

    exposure: float
    rank: float
    n_candidates: int  # candidates ranked against, the canary included
    space_size: int | None
    exact: bool
    max_measurable: float
    canary_log_perplexity: float  # bits: -log2 P(canary)
    extrapolated_exposure: float | None
    extrapolation_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"exposure": self.exposure, "rank": self.rank, "n_candidates": self.n_candidates,
                "space_size": self.space_size, "exact": self.exact, "max_measurable": self.max_measurable,
                "canary_log_perplexity": self.canary_log_perplexity,
                "extrapolated_exposure": self.extrapolated_exposure,
                "extrapolation_reason": self.extrapolation_reason}


LogProbFn = Callable[[Sequence[str]], Sequence[float]]


def causal_lm_text_logprob_fn(
    network: torch.nn.Module, encode_text: Callable[[str], Sequence[int]], *, bos_id: int, pad_id: int = 0,
    batch_size: int = 256,
) -> LogProbFn:
    """texts -> natural-log probability of each under a causal LM, conditioned on ``bos_id`` (for `exposure`).

    ``encode_text`` is the model's tokenizer (e.g. ``lambda t: note_text.encode(tokenizer, t)``).
    """

    def log_probs(texts: Sequence[str]) -> np.ndarray:
        sequences = [[bos_id, *encode_text(text)] for text in texts]
        return causal_lm_sequence_log_probs(network, sequences, batch_size=batch_size, pad_id=pad_id)[0]

    return log_probs


def exposure(
    model_logprob_fn: LogProbFn,
    canary: str,
    candidates: Sequence[str],
    *,
    space_size: int | None = None,
    extrapolate: bool = True,
) -> CanaryExposure:
    """Carlini et al.'s exposure of ``canary`` against ``candidates`` (secrets of the same template).

    ``model_logprob_fn`` maps a batch of texts to their natural-log probabilities under the model (e.g. a
    `causal_lm_sequence_log_probs` sum); the shared template prefix cancels out of the ranking. ``candidates``
    is the whole space minus the canary (exact exposure) or a uniform sample of it (``space_size`` then says
    how large the space is; it is recorded, and it makes the result "not exact"). A candidate equal to the
    canary is dropped.
    """
    others = [candidate for candidate in dict.fromkeys(candidates) if candidate != canary]
    if not others:
        raise ValueError("no candidates other than the canary to rank it against")
    scores = np.asarray(model_logprob_fn([canary, *others]), dtype=np.float64)
    if scores.shape != (len(others) + 1,):
        raise ValueError(f"model_logprob_fn returned {scores.shape} values for {len(others) + 1} texts")
    _finite(scores, "model log-probabilities")
    perplexity = -scores / math.log(2.0)  # log-perplexity in bits, as in the paper
    canary_value, other_values = perplexity[0], perplexity[1:]
    lower = int(np.sum(other_values < canary_value))
    ties = int(np.sum(other_values == canary_value))
    rank = 1.0 + lower + ties / 2.0
    n_candidates = len(others) + 1
    if space_size is not None and space_size < n_candidates:
        raise ValueError(f"space_size {space_size} is smaller than the {n_candidates} candidates given")
    exact = space_size is None or space_size == n_candidates
    exposure_bits = math.log2(n_candidates) - math.log2(rank)
    extrapolated: float | None = None
    reason: str | None = None
    if not extrapolate:
        reason = "not requested"
    elif len(other_values) < 100:
        reason = f"{len(other_values)} candidates are too few to fit a distribution (need 100)"
    elif np.ptp(other_values) == 0.0:
        reason = "every candidate has the same perplexity; no distribution to fit"
    else:
        shape, location, scale = stats.skewnorm.fit(other_values)
        log_cdf = float(stats.skewnorm.logcdf(canary_value, shape, location, scale))
        ceiling = math.log2(space_size if space_size is not None else n_candidates)
        extrapolated = min(ceiling, max(0.0, -log_cdf / math.log(2.0)))  # the exposure of rank 1 is log2|R|
    return CanaryExposure(
        exposure=exposure_bits,
        rank=rank,
        n_candidates=n_candidates,
        space_size=space_size if space_size is not None else n_candidates,
        exact=exact,
        max_measurable=math.log2(n_candidates),
        canary_log_perplexity=float(canary_value),
        extrapolated_exposure=extrapolated,
        extrapolation_reason=reason,
    )
