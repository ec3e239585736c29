"""The imaging networks a spec names by ``network.family``: MONAI's, 2D, one input channel.

Importable without Lightning, so that the predictor (and serving) builds a
network from its saved description cheaply. Each family takes only the keys
listed in ``FAMILY_KEYS``; a spec naming another family or key is refused
with UnknownComponentError / ValueError naming the spec, before any run opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from medllm_pipelines.lib.train.optim import check_component

SEGMENTATION_FAMILIES = ("unet", "segresnet")
CLASSIFICATION_FAMILIES = ("resnet", "densenet")
# The registry family (lib/train/registry.FAMILIES) each network family is registered under.
REGISTRY_FAMILY = {"unet": "unet", "segresnet": "unet", "resnet": "cnn", "densenet": "cnn"}
FAMILY_KEYS: dict[str, dict[str, Any]] = {
    "unet": {"channels": (16, 32, 64), "strides": (2, 2), "num_res_units": 1, "dropout": 0.0},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 2, 2), "blocks_up": (1, 1), "dropout_prob": None},
    "resnet": {"block": "basic", "layers": (1, 1, 1, 1), "block_inplanes": (16, 32, 64, 128)},
    "densenet": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2), "dropout_prob": 0.0},
}
SEGMENTATION_CLASSES = 2  # background, lesion: softmax over two channels, as DiceCE with to_onehot_y expects


def network_description(network: Mapping[str, Any], families: tuple[str, ...], spec_id: str = "") -> dict[str, Any]:
    """The spec's ``network`` block with the family's defaults filled in: what the model folder records.

    Lists become lists (JSON), so the description reads back identically.
    """
    block = dict(network or {})
    family = check_component("network", block.pop("family", families[0]), families, spec_id)
    defaults = FAMILY_KEYS[family]
    unknown = sorted(set(block) - set(defaults))
    if unknown:
        raise ValueError(f"spec {spec_id or '?'}: network {family} has no keys {unknown}; known: {sorted(defaults)}")
    merged = {**defaults, **block}
    return {"family": family, **{k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}}


def build_segmentation_network(description: Mapping[str, Any]) -> nn.Module:
    """Two output channels (background, lesion) per pixel, logits."""
    family = description["family"]
    if family == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=2, in_channels=1, out_channels=SEGMENTATION_CLASSES,
                    channels=tuple(description["channels"]), strides=tuple(description["strides"]),
                    num_res_units=int(description["num_res_units"]), dropout=float(description["dropout"]))
    if family == "segresnet":
        from monai.networks.nets import SegResNet

        dropout = description["dropout_prob"]
        return SegResNet(spatial_dims=2, in_channels=1, out_channels=SEGMENTATION_CLASSES,
                         init_filters=int(description["init_filters"]), blocks_down=tuple(description["blocks_down"]),
                         blocks_up=tuple(description["blocks_up"]),
                         dropout_prob=None if dropout is None else float(dropout))
    check_component("network", family, SEGMENTATION_FAMILIES)
    raise AssertionError("unreachable")


def build_classification_network(description: Mapping[str, Any]) -> nn.Module:
    """One logit per image: the log-odds that it shows a lesion."""
    family = description["family"]
    if family == "resnet":
        from monai.networks.nets import ResNet

        return ResNet(block=str(description["block"]), layers=tuple(description["layers"]),
                      block_inplanes=list(description["block_inplanes"]), spatial_dims=2, n_input_channels=1,
                      num_classes=1)
    if family == "densenet":
        from monai.networks.nets import DenseNet

        return DenseNet(spatial_dims=2, in_channels=1, out_channels=1, init_features=int(description["init_features"]),
                        growth_rate=int(description["growth_rate"]), block_config=tuple(description["block_config"]),
                        dropout_prob=float(description["dropout_prob"]))
    check_component("network", family, CLASSIFICATION_FAMILIES)
    raise AssertionError("unreachable")


def parameter_count(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))
