"""Attacks lower accuracy, defences are measured before/after, perturbations use the real unit factors (row S8).

Every model is tiny and trained here, in plain torch, so the file runs in well
under a minute on one core.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from medllm_pipelines.lib.curate.preprocessing import PreprocessingSpec, fit_preprocessing
from medllm_pipelines.lib.evaluate import robustness as R
from medllm_pipelines.lib.train.networks import TabularMLP
from medllm_pipelines.lib.train.predictor import TabularPredictor

EPSILONS = (0.05, 0.1, 0.25, 0.5)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread than fighting over the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tabular() -> dict[str, torch.Tensor]:
    features, labels = make_classification(n_samples=600, n_features=8, n_informative=5, n_redundant=1,
                                           class_sep=1.2, random_state=0)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    return {"x_train": x[:450], "y_train": y[:450], "x_test": x[450:], "y_test": y[450:]}


def _mlp(tabular: dict[str, torch.Tensor], seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)  # the initial weights too
    return R.train_classifier(TabularMLP(8, (32, 16), dropout=0.0), tabular["x_train"], tabular["y_train"],
                              epochs=40, seed=seed, **options)


@pytest.fixture(scope="module")
def mlp(tabular) -> nn.Module:
    return _mlp(tabular)


def _proba_of(network: nn.Module):
    def predict_proba(features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(network(torch.tensor(features, dtype=torch.float32))).numpy()
    return predict_proba


@pytest.fixture(scope="module")
def clinical() -> dict:
    """A T2D-like raw frame in clinical units, its fitted preprocessing and a TabularPredictor."""
    rng = np.random.default_rng(3)
    n = 500
    label = (rng.random(n) < 0.4).astype(int)
    frame = pd.DataFrame({
        "patient_pseudonym": [f"p{i:04d}" for i in range(n)],
        "age_years": rng.uniform(30, 80, n).round(),
        "bmi": rng.normal(27, 4, n) + 2 * label,
        "hba1c": rng.normal(5.4, 0.4, n) + 1.4 * label,
        "fasting_glucose": rng.normal(5.2, 0.5, n) + 1.8 * label,
        "systolic_bp": rng.normal(128, 14, n),
        "sex": rng.choice(["female", "male"], n),
        "label": label,
        "split": np.where(np.arange(n) < 350, "train", "test"),
    })
    numeric = ("age_years", "bmi", "hba1c", "fasting_glucose", "systolic_bp")
    fitted = fit_preprocessing(frame, PreprocessingSpec(numeric_columns=numeric, categorical_columns=("sex",)))
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"].reset_index(drop=True)
    torch.manual_seed(0)
    network = R.train_classifier(TabularMLP(fitted.n_features_out, (16,), dropout=0.0),
                                 torch.tensor(fitted.transform_array(train)),
                                 torch.tensor(train["label"].to_numpy()), epochs=40, seed=0)
    return {"predictor": TabularPredictor(network, fitted, {}), "test": test, "labels": test["label"].to_numpy()}


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16x16 z-scored slices of smooth texture; every other one shows a bright 6x6 lesion, its mask alongside."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    images = gaussian_filter(rng.normal(0, 1, (n, 1, 16, 16)), sigma=(0, 0, 2, 2))
    images = images / images.std()
    masks = np.zeros((n, 1, 16, 16))
    presence = (np.arange(n) % 2).astype(np.int64)
    for i in np.flatnonzero(presence):
        r, c = rng.integers(1, 9, 2)
        masks[i, 0, r:r + 6, c:c + 6] = 1
        images[i, 0, r:r + 6, c:c + 6] += 2.0
    images = (images - images.mean(axis=(1, 2, 3), keepdims=True)) / images.std(axis=(1, 2, 3), keepdims=True)
    return (torch.tensor(images, dtype=torch.float32), torch.tensor(masks, dtype=torch.float32),
            torch.tensor(presence))


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                    nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).squeeze(-1)


@pytest.fixture(scope="module")
def cnn() -> dict:
    train_x, _, train_y = _images(128, seed=0)
    test_x, _, test_y = _images(64, seed=1)
    torch.manual_seed(0)
    network = R.train_classifier(TinyCNN(), train_x, train_y, epochs=15, batch_size=32, seed=0)
    return {"network": network, "x": test_x, "y": test_y}


@pytest.fixture(scope="module")
def unet() -> dict:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), num_res_units=0)
    images, masks, _ = _images(64, seed=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=0.01)
    for _ in range(60):
        optimiser.zero_grad()
        loss_fn(network(images), masks).backward()
        optimiser.step()
    test_images, test_masks, _ = _images(32, seed=3)
    return {"network": network.eval(), "x": test_images, "masks": test_masks}


# ----------------------------------------------------------------------------- white-box attacks


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_accuracy_falls_monotonically_with_epsilon(mlp, tabular, attack):
    curve = R.attack_curve(mlp, tabular["x_test"], tabular["y_test"], EPSILONS, attack=attack)
    values = [v for _, v in curve.points]
    assert curve.points[0] == (0.0, R.classification_accuracy(mlp, tabular["x_test"], tabular["y_test"]))
    assert all(b <= a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < values[0] - 0.2


def test_pgd_is_at_least_as_strong_as_fgsm_and_stays_in_the_ball(mlp, tabular):
    x, y = tabular["x_test"], tabular["y_test"]
    for eps in EPSILONS:
        adversarial = R.pgd(mlp, x, y, eps)
        assert (adversarial - x).abs().max() <= eps + 1e-6
        assert R.classification_accuracy(mlp, adversarial, y) <= R.classification_accuracy(mlp, R.fgsm(mlp, x, y, eps), y)


def test_feature_mask_keeps_columns_fixed_and_bounds_hold(mlp, tabular):
    x, y = tabular["x_test"], tabular["y_test"]
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32)
    adversarial = R.pgd(mlp, x, y, 0.5, feature_mask=mask, bounds=(-1.0, None))
    assert torch.equal(adversarial[:, 4:], torch.clamp(x[:, 4:], min=-1.0))
    assert adversarial.min() >= -1.0


def test_multiclass_pgd_lowers_accuracy():
    features, labels = make_classification(n_samples=450, n_features=6, n_informative=4, n_classes=3,
                                           n_clusters_per_class=1, random_state=1)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    torch.manual_seed(0)
    network = R.train_classifier(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), x[:300], y[:300],
                                 epochs=40, seed=0)
    clean = R.classification_accuracy(network, x[300:], y[300:])
    attacked = R.classification_accuracy(network, R.pgd(network, x[300:], y[300:], 0.5), y[300:])
    assert clean > 0.7
    assert attacked < clean - 0.2


# ----------------------------------------------------------------------------- black-box attack


def test_black_box_attack_lowers_accuracy_within_its_query_budget(mlp, tabular):
    seen_rows = []
    score = _proba_of(mlp)

    def counted(features: np.ndarray) -> np.ndarray:
        seen_rows.append(len(features))
        return score(features)

    x, y = tabular["x_test"].numpy(), tabular["y_test"].numpy()
    result = R.random_search_attack(counted, x, y, 0.5, query_budget=60, seed=0)
    assert result.queries.max() <= 60
    assert sum(seen_rows) == result.queries.sum()  # every row scored is counted against its example
    assert np.abs(result.adversarial - x).max() <= 0.5 + 1e-9
    clean = R.classification_accuracy(mlp, tabular["x_test"], tabular["y_test"])
    under_attack = R.classification_accuracy(mlp, torch.tensor(result.adversarial, dtype=torch.float32),
                                             tabular["y_test"])
    assert under_attack == pytest.approx(1.0 - result.success.mean(), abs=1e-6)
    assert under_attack < clean - 0.2
    one_query = R.random_search_attack(score, x, y, 0.5, query_budget=1)
    assert one_query.queries.max() == 1 and np.array_equal(one_query.adversarial, x)


def test_black_box_curve_starts_clean_and_falls(mlp, tabular):
    curve = R.black_box_curve(_proba_of(mlp), tabular["x_test"].numpy(), tabular["y_test"].numpy(), (0.1, 0.5),
                              query_budget=40)
    assert curve.clean == pytest.approx(R.classification_accuracy(mlp, tabular["x_test"], tabular["y_test"]))
    assert curve.value_at(0.5) < curve.value_at(0.1) <= curve.clean
    assert curve.details["queries"]["0.5"]["max_queries"] <= 40


# ----------------------------------------------------------------------------- defences


def test_pgd_training_makes_the_mlp_more_robust_at_the_trained_epsilon(mlp, tabular):
    robust = _mlp(tabular, adversarial_eps=0.25)
    result = R.adversarial_training_defence(mlp, robust, tabular["x_test"], tabular["y_test"], 0.25)
    assert result.after > result.before + 0.05
    assert result.details["clean_accuracy_adversarially_trained"] > 0.8


def test_ensemble_defence_reports_white_box_and_transfer(tabular):
    members = [_mlp(tabular, seed=s) for s in (1, 2, 3)]
    result = R.ensemble_defence(members, tabular["x_test"], tabular["y_test"], 0.25)
    own = result.details["member_accuracy_under_attack"]
    assert result.before == pytest.approx(np.mean(own))
    assert result.before < np.mean(result.details["clean_accuracy_members"])
    # the averaged logits are attacked as one differentiable model: still hurt by PGD
    assert result.after < result.details["clean_accuracy_ensemble"]
    assert result.details["ensemble_accuracy_transfer_from_member_0"] >= own[0]


def test_plausibility_filter_uses_the_quality_rules_ranges():
    plausibility = R.PlausibilityFilter.from_rules()
    assert plausibility.ranges["fasting_glucose"] == (1.5, 40.0)
    assert plausibility.ranges["hba1c"] == (3.0, 20.0)
    frame = pd.DataFrame({"fasting_glucose": [5.5, 99.1, np.nan, 5.0], "hba1c": [6.0, 6.0, 6.0, 2.0],
                          "age_years": [50.0, 50.0, 50.0, 50.0]})
    assert plausibility.accepted(frame).tolist() == [True, False, True, False]
    assert plausibility.accepted(frame.assign(age_years=200.0)).tolist() == [False] * 4


def test_raw_feature_model_reproduces_the_predictor_and_filtering_rejects_out_of_range(clinical):
    predictor, test, labels = clinical["predictor"], clinical["test"], clinical["labels"]
    raw = R.raw_feature_model(predictor.network, predictor.preprocessing, test)
    logits = raw.model(raw.values).detach()
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), predictor.predict_proba(test), atol=1e-5)

    y = torch.tensor(labels)
    plausibility = R.PlausibilityFilter.from_rules()
    # an attacker allowed 3 standard deviations per feature drives many values off the clinical scale
    adversarial = R.pgd(raw.model, raw.values, y, 3.0 * torch.tensor(raw.scale, dtype=torch.float32))
    adversarial_frame = raw.to_frame(adversarial, test)
    result = R.filtering_defence(predictor.predict_proba, adversarial_frame, labels, plausibility, clean=test,
                                 attack="pgd", eps=3.0)
    expected_rejected = ~plausibility.accepted(adversarial_frame)
    assert result.details["clean_rejected_share"] == 0.0
    assert 0.0 < result.details["rejected_share"] == pytest.approx(expected_rejected.mean())
    assert result.before == pytest.approx(np.mean(predictor.predict(adversarial_frame) == labels))
    kept = ~expected_rejected
    assert result.after == pytest.approx(np.mean(predictor.predict(adversarial_frame[kept]) == labels[kept]))
    assert result.before < np.mean(predictor.predict(test) == labels)

    everything_out = R.filtering_defence(predictor.predict_proba, test.assign(age_years=300.0), labels, plausibility)
    assert everything_out.after is None and everything_out.details["rejected_share"] == 1.0


def test_feature_squeezing_detects_more_adversarial_than_clean_images(cnn):
    network, x, y = cnn["network"], cnn["x"], cnn["y"]
    adversarial = R.pgd(network, x, y, 0.3)
    result = R.feature_squeezing_defence(network, x, adversarial, y, median_size=2, attack="pgd", eps=0.3)
    assert result.before < result.details["clean_accuracy"]
    assert result.details["detection_rate"] > result.details["clean_false_positive_rate"]
    assert result.after == pytest.approx(
        np.mean((R.squeezing_scores(network, adversarial, median_size=2) > result.details["score_threshold"])
                | (R.predicted_labels(network(adversarial).detach()) == y).numpy()))


def test_squeezers_quantise_and_smooth():
    images = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    assert torch.unique(R.bit_depth_squeeze(images, 2)).numel() == 4
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 10.0
    assert R.median_squeeze(spike, 3).abs().max() == 0.0


# ----------------------------------------------------------------------------- imaging attacks


def test_attacks_reduce_cnn_accuracy(cnn):
    curve = R.attack_curve(cnn["network"], cnn["x"], cnn["y"], (0.1, 0.3), attack="pgd")
    assert curve.clean > 0.8
    assert curve.value_at(0.3) < curve.clean - 0.3
    fgsm = R.classification_accuracy(cnn["network"], R.fgsm(cnn["network"], cnn["x"], cnn["y"], 0.3), cnn["y"])
    assert fgsm < curve.clean


def test_pgd_on_the_dice_loss_reduces_unet_dice(unet):
    curve = R.segmentation_curve(unet["network"], unet["x"], unet["masks"], (0.1, 0.5), steps=10)
    assert curve.metric == "dice" and curve.clean > 0.5
    assert curve.value_at(0.5) < curve.clean - 0.2
    loss = R.soft_dice_loss(unet["network"](unet["x"]).detach(), unet["masks"])
    assert loss.shape == (32,) and bool(((loss >= 0) & (loss <= 1)).all())


def test_dice_is_undefined_without_lesion_images(unet):
    empty = torch.zeros_like(unet["masks"])
    assert R.segmentation_dice(unet["network"], unet["x"], empty) is None


# ----------------------------------------------------------------------------- clinical perturbations


def test_unit_mixups_reproduce_the_known_factors():
    glucose = R.unit_mixup("fasting_glucose", "mg/dL")
    assert glucose.written_value(1.0) == pytest.approx(18.016, abs=1e-3)  # 180.156 g/mol / 10
    cholesterol = R.unit_mixup("total_cholesterol", "mg/dL")
    assert cholesterol.written_value(1.0) == pytest.approx(38.665, abs=1e-3)
    hba1c = R.unit_mixup("hba1c", "mmol/mol")  # IFCC-NGSP master equation, affine
    assert hba1c.written_value(6.5) == pytest.approx((6.5 - 2.152) / 0.09148)
    assert hba1c.written_value(6.5) == pytest.approx(47.5, abs=0.1)
    with pytest.raises(ValueError, match="accept no unit"):
        R.unit_mixup("bmi", "mg/dL")


def test_measurement_noise_has_the_declared_cv():
    frame = pd.DataFrame({"fasting_glucose": np.full(20000, 6.0), "label": 0})
    noisy = R.measurement_noise(frame, {"fasting_glucose": 0.06}, multiplier=2.0, seed=1)
    assert np.std(noisy["fasting_glucose"] / 6.0 - 1.0) == pytest.approx(0.12, rel=0.03)
    assert noisy["label"].equals(frame["label"])


def test_tabular_perturbation_suite_on_the_predictor(clinical):
    predictor, test, labels = clinical["predictor"], clinical["test"], clinical["labels"]
    results = R.tabular_perturbation_suite(predictor.predict_proba, test, labels,
                                           plausibility=R.PlausibilityFilter.from_rules())
    by_kind = {(r.perturbation, r.target): r for r in results}
    clean = float(np.mean(predictor.predict(test) == labels))
    glucose = by_kind[("unit_mixup", "fasting_glucose")]
    assert glucose.clean == pytest.approx(clean)
    assert glucose.perturbed < clean - 0.2  # every glucose x18: the model calls (nearly) everyone diabetic
    assert glucose.details["rejected_share"] == 1.0  # and the plausibility filter would have stopped all of it
    missing = by_kind[("missing", "hba1c")]
    imputed = test.assign(hba1c=np.nan)
    assert missing.perturbed == pytest.approx(np.mean(predictor.predict(imputed) == labels))
    assert missing.perturbed < clean
    noise = [r for r in results if r.perturbation == "measurement_noise"]
    assert [r.details["cv_multiplier"] for r in noise] == [1.0, 2.0, 4.0]
    assert ("unit_mixup", "total_cholesterol") not in by_kind  # not an input of this model


def test_image_perturbation_suite(cnn, unet):
    network, x, y = cnn["network"], cnn["x"], cnn["y"]
    results = R.image_perturbation_suite(lambda images: R.classification_accuracy(network, images, y), x)
    assert {r.perturbation for r in results} == {"image_noise", "contrast_gamma"}
    noise = {r.details["sigma"]: r.perturbed for r in results if r.perturbation == "image_noise"}
    assert noise[0.5] <= results[0].clean
    gamma = R.contrast_change(x, 2.0)
    assert torch.allclose(gamma.flatten(1).std(dim=1, unbiased=False), torch.ones(len(x)), atol=1e-4)
    assert not torch.allclose(gamma, x, atol=1e-3)
    dice = R.image_perturbation_suite(lambda images: R.segmentation_dice(unet["network"], images, unet["masks"]),
                                      unet["x"], metric="dice")
    assert all(r.metric == "dice" and r.perturbed is not None for r in dice)


def test_config_declares_the_suites():
    config = R.load_robustness_config()
    assert config.version
    assert 0 < config.attacks["gate_epsilon"] <= max(config.attacks["tabular_epsilons"])
    assert config.extra_plausible["age_years"] == (0.0, 125.0)
