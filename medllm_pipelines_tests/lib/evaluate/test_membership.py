"""Loss-threshold membership inference and canary exposure: by hand, on an overfitted model and on a tiny GPT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from medllm_pipelines.lib.evaluate.membership import (
    DEFAULT_CANARY_FORMAT,
    binary_log_losses,
    canary_space_size,
    causal_lm_sequence_losses,
    causal_lm_text_logprob_fn,
    exposure,
    fill_canary,
    membership_inference,
    multiclass_log_losses,
    plant_canaries,
    regression_squared_errors,
    sample_canary_candidates,
)
from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig
from medllm_pipelines.lib.train.generative.note_text import BOS, PAD, build_note_tokenizer, encode
from medllm_pipelines.lib.train.text.training import cpu_threads

# --- per-example losses ----------------------------------------------------------------------------------------


def test_binary_and_multiclass_losses_match_scikit_learn_row_by_row() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 50)
    score = rng.random(50)
    score[:2] = [0.0, 1.0]  # clipped to float64 eps, as log_loss clips
    ours = binary_log_losses(truth, score)
    expected = [log_loss([t], [[1 - s, s]], labels=[0, 1]) for t, s in zip(truth, score)]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)

    proba = rng.dirichlet(np.ones(3), 50)
    labels = rng.integers(0, 3, 50)
    expected = [log_loss([y], [p], labels=[0, 1, 2]) for y, p in zip(labels, proba)]
    np.testing.assert_allclose(multiclass_log_losses(labels, proba), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="sum to 1"):
        multiclass_log_losses(labels, proba * 2)


def test_regression_squared_errors_average_to_the_mse() -> None:
    truth = np.array([1.0, 2.0, 4.0])
    pred = np.array([1.5, 2.0, 1.0])
    np.testing.assert_allclose(regression_squared_errors(truth, pred), [0.25, 0.0, 9.0])


def test_causal_lm_losses_equal_cross_entropy_per_sequence_whatever_the_padding() -> None:
    torch.manual_seed(0)
    network = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=1, n_head=2, n_embd=16))
    sequences = [[1, 5, 7, 3], [1, 2, 9, 9, 4, 6, 8, 2], [1, 11]]
    batched = causal_lm_sequence_losses(network, sequences, batch_size=3)
    one_by_one = [causal_lm_sequence_losses(network, [s])[0] for s in sequences]
    with torch.no_grad():
        expected = [F.cross_entropy(network(torch.tensor([s[:-1]]))[0], torch.tensor(s[1:])).item() for s in sequences]
    np.testing.assert_allclose(batched, expected, rtol=1e-5)
    np.testing.assert_allclose(one_by_one, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="two tokens"):
        causal_lm_sequence_losses(network, [[1]])


# --- membership inference ----------------------------------------------------------------------------------------


def test_attack_auc_and_advantage_by_hand() -> None:
    members = np.array([0.1, 0.2, 0.5, 0.9])
    nonmembers = np.array([0.3, 0.6, 0.9, 1.5])
    pairs = [(m < n) + 0.5 * (m == n) for m in members for n in nonmembers]
    result = membership_inference(members, nonmembers, n_boot=200)
    assert result.auc == pytest.approx(np.mean(pairs))  # 12.5 / 16
    # thresholds 0.2: TPR 0.5, FPR 0 -> 0.5; 0.5: 0.75 - 0.25 = 0.5; the first is taken
    assert result.best_advantage == pytest.approx(0.5) and result.best_threshold == pytest.approx(0.2)
    # Yeom's threshold: the mean member loss 0.425 -> TPR 0.5, FPR 0.25
    assert result.yeom_threshold == pytest.approx(0.425) and result.yeom_advantage == pytest.approx(0.25)
    low, high = result.auc_interval
    assert low <= result.auc <= high
    assert result.as_metadata()["membership_inference_auc"] == pytest.approx(0.78125)


def test_overfitted_model_leaks_membership() -> None:
    features, labels = make_classification(n_samples=600, n_features=10, flip_y=0.25, random_state=0)
    member_x, member_y = features[:300], labels[:300]
    holdout_x, holdout_y = features[300:], labels[300:]
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(member_x, member_y)  # memorises noisy labels
    result = membership_inference(
        binary_log_losses(member_y, forest.predict_proba(member_x)[:, 1]),
        binary_log_losses(holdout_y, forest.predict_proba(holdout_x)[:, 1]),
        n_boot=300,
    )
    assert result.auc > 0.7 and result.auc_interval[0] > 0.65  # chance is 0.5
    assert result.best_advantage > 0.3 and result.yeom_advantage > 0.3
    assert result.mean_member_loss < result.mean_nonmember_loss


def test_identical_distributions_give_chance_auc() -> None:
    features, labels = make_classification(n_samples=3000, n_features=10, flip_y=0.1, random_state=1)
    model = LogisticRegression(max_iter=500).fit(features[:1000], labels[:1000])
    # "members" and "non-members" both unseen: the losses come from one distribution
    losses = binary_log_losses(labels[1000:], model.predict_proba(features[1000:])[:, 1])
    result = membership_inference(losses[:1000], losses[1000:], n_boot=300)
    assert abs(result.auc - 0.5) < 0.04
    low, high = result.auc_interval
    assert low < 0.5 < high
    assert result.yeom_advantage < 0.08


def test_membership_inference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least two"):
        membership_inference([0.1], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        membership_inference([0.1, float("nan")], [0.2, 0.3])


# --- canaries ----------------------------------------------------------------------------------------------------


def test_plant_canaries_inserts_each_secret_as_a_line_repeats_times() -> None:
    texts = [f"line one of text {i}\nline two" for i in range(20)]
    planted = plant_canaries(texts, 2, seed=3, repeats=5, exclude=["000000"])
    assert len(planted.secrets) == 2 and "000000" not in planted.secrets
    for secret, canary in zip(planted.secrets, planted.canaries):
        assert canary == DEFAULT_CANARY_FORMAT.replace("{d}", "{}").format(*secret)
        holding = [i for i, text in enumerate(planted.texts) if canary in text.split("\n")]
        assert holding == planted.positions[secret] and len(holding) == 5
    for original, text in zip(texts, planted.texts):  # the original lines survive, in order
        kept = [line for line in text.split("\n") if not line.startswith("my code is")]
        assert kept == original.split("\n")
    assert plant_canaries(texts, 2, seed=3, repeats=5, exclude=["000000"]) == planted
    assert "secret" not in str(planted.as_metadata()) and planted.as_metadata()["canaries_planted"] == 2
    with pytest.raises(ValueError, match="slot"):
        plant_canaries(texts, 1, "no slot here")
    with pytest.raises(ValueError, match="distinct texts"):
        plant_canaries(texts, 1, repeats=21)


def test_exposure_over_the_whole_space_is_exact() -> None:
    canary_format = "pin {d}{d}"
    candidates = sample_canary_candidates(canary_format, n=1000)
    assert len(candidates) == canary_space_size(canary_format) == 100

    def log_probs(texts: list[str]) -> list[float]:  # secret 42 is the 3rd most likely of 100
        return [-abs(int(text[-2:]) - 40) * 0.5 for text in texts]

    result = exposure(log_probs, fill_canary(canary_format, "42"), candidates)
    # log-probs 0 (40), -0.5 (39, 41), -1.0 (38, 42): 3 lower, 1 tie -> rank 1 + 3 + 0.5
    assert result.exact and result.rank == 4.5 and result.n_candidates == 100
    assert result.exposure == pytest.approx(math.log2(100) - math.log2(4.5))

    flat = exposure(lambda texts: [0.0] * len(texts), fill_canary(canary_format, "42"), candidates)
    assert flat.exposure == pytest.approx(math.log2(100 / 50.5))  # no memorisation: about 1 bit, not log2(100)
    assert flat.extrapolated_exposure is None


def test_planted_canary_is_exposed_and_unplanted_ones_are_not() -> None:
    """A tiny GPT trained on texts holding one canary 20 times ranks it first among 2,000 sampled secrets."""
    rng = np.random.default_rng(0)

    def sentence() -> str:
        kind = rng.integers(0, 3)
        if kind == 0:
            return f"the clinic opens at {rng.integers(6, 11)} and closes at {rng.integers(16, 22)}"
        if kind == 1:
            return f"room {rng.integers(100, 999)} is on floor {rng.integers(1, 9)}"
        return f"call extension {rng.integers(1000, 9999)} for the desk"

    texts = ["\n".join(sentence() for _ in range(2)) for _ in range(300)]
    planted = plant_canaries(texts, 1, seed=1, repeats=20)
    controls = sample_canary_candidates(n=3, seed=99, exclude=planted.secrets)  # same template, never planted

    tokenizer = build_note_tokenizer(planted.texts)
    bos, pad = tokenizer.token_to_id(BOS), tokenizer.token_to_id(PAD)
    sequences = [[bos, *encode(tokenizer, text)] for text in planted.texts]
    ids = torch.full((len(sequences), max(map(len, sequences))), pad)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(sequence)
    targets = ids[:, 1:].masked_fill(ids[:, 1:] == pad, -100)
    vocab = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    network = GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=64))
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3)
    with cpu_threads(1):
        for _ in range(250):
            batch = torch.as_tensor(rng.integers(0, len(sequences), 32))
            loss = F.cross_entropy(network(ids[batch, :-1]).reshape(-1, vocab), targets[batch].reshape(-1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        log_probs = causal_lm_text_logprob_fn(network, lambda text: encode(tokenizer, text), bos_id=bos, pad_id=pad)
        results = {}
        for canary in [*planted.canaries, *controls]:
            candidates = sample_canary_candidates(n=2000, seed=5, exclude=[canary[-6:]])
            results[canary] = exposure(log_probs, canary, candidates, space_size=canary_space_size())

    memorised = results[planted.canaries[0]]
    assert not memorised.exact and memorised.space_size == 10**6
    assert memorised.exposure > 10.0  # log2(2001) = 10.97 is the most a 2,000-sample rank can show
    assert memorised.extrapolated_exposure > 15.0
    control_exposures = [results[c].exposure for c in controls]
    assert np.median(control_exposures) < 3.0 and max(control_exposures) < 6.0
