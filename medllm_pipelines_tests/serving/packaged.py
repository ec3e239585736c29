"""Small real models, trained here in seconds and packaged as `medllm package-model` packages them."""

from __future__ import annotations

from pathlib import Path

import torch

from medllm_pipelines.lib.curate.preprocessing import fit_preprocessing
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.train.imaging.training import CLASSIFICATION, SEGMENTATION, ImagingConfig, train_imaging_model
from medllm_pipelines.lib.train.tabular import TrainConfig, train_tabular_classifier
from medllm_pipelines.lib.train.tracking import pinned_pip_requirements
from medllm_pipelines.serving.models import package_model
from medllm_pipelines_tests.lib.scenarios.test_diagnosis_assessor import t2d_like_frame
from medllm_pipelines_tests.lib.train.test_imaging import TINY_DENSENET, TINY_TRAINING, TINY_UNET, synthetic_lesion_frame


def train_t2d(work: Path, seed: int = 7) -> Path:
    frame = t2d_like_frame()
    preprocessing = fit_preprocessing(frame, load_spec("t2d_risk").preprocessing)
    config = TrainConfig(hidden_sizes=(32, 16), dropout=0.1, lr=3e-3, max_epochs=25, seed=seed)
    return Path(train_tabular_classifier(frame, preprocessing, "label", config, work).model_dir)


def train_imaging(work: Path) -> dict[str, Path]:
    slices = work / "slices"
    slices.mkdir(parents=True, exist_ok=True)
    frame = synthetic_lesion_frame(slices)
    folders = {}
    for name, task, network in (("lesion_segmentation", SEGMENTATION, TINY_UNET),
                                ("lesion_classifier", CLASSIFICATION, TINY_DENSENET)):
        config = ImagingConfig.from_spec("tiny", task, network, TINY_TRAINING[task])
        result = train_imaging_model(frame, slices, config, work / name, spec_id=name, dataset_version="v" * 64)
        folders[name] = Path(result.model_dir)
    return folders


def packaged_models(work: Path) -> Path:
    """t2d_risk v1, lesion_classifier v1 and lesion_segmentation v1 under ``work/packages``."""
    torch.set_num_threads(1)
    out = work / "packages"
    out.mkdir(parents=True, exist_ok=True)
    requirements = pinned_pip_requirements()
    package_model("t2d_risk", "1", train_t2d(work / "t2d"), out, family="mlp", dataset_version="d" * 64,
                  requirements=requirements)
    for name, folder in train_imaging(work / "imaging").items():
        package_model(name, "1", folder, out, family="cnn", dataset_version="v" * 64, requirements=requirements)
    return out
