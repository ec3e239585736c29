"""An imaging model as an MLflow pyfunc: a stack of de-identified slices in, masks or lesion probabilities out.

Loaded with ``mlflow.pyfunc.load_model``; the model folder travels as the
pyfunc's ``model_dir`` artifact and is read by ``ImagingPredictor`` (which
normalises each slice as training did). Input: float32 array (n, H, W) of
raw pixel values; output: uint8 masks (n, H, W) for a segmentation model,
float32 probabilities (n,) for a lesion-presence classifier.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np

INPUT_NAME = "slices"


def predictions(predictor: Any, model_input: Any) -> np.ndarray:
    """What the pyfunc returns for ``model_input`` (an array, or a frame/dict holding one under ``slices``)."""
    if isinstance(model_input, dict):
        model_input = model_input[INPUT_NAME]
    slices = np.asarray(model_input, dtype=np.float32)
    if slices.ndim == 2:
        slices = slices[None]
    if slices.ndim != 3:
        raise ValueError(f"expected slices of shape (n, H, W), got {slices.shape}")
    if predictor.task == "segmentation":
        masks = predictor.predict_masks(list(slices))
        return np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *slices.shape[1:]), dtype=np.uint8)
    return predictor.predict_proba(list(slices)).astype(np.float32)


def signature(task: str) -> Any:
    """Tensor signature with free batch and slice sizes (sliding windows segment any size; the CNN pools globally)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    output_shape = (-1, -1, -1) if task == "segmentation" else (-1,)
    output_type = np.dtype(np.uint8) if task == "segmentation" else np.dtype(np.float32)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
                          outputs=Schema([TensorSpec(output_type, output_shape)]))


class LesionImagingModel(mlflow.pyfunc.PythonModel):
    # The tensor signature validates the input; MLflow's type-hint validation (and its warning) is skipped.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

        self.predictor = ImagingPredictor.load(context.artifacts["model_dir"])

    # No type hints on predict: MLflow would try to turn them into a schema (the tensor signature is the schema).
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return predictions(self.predictor, model_input)
