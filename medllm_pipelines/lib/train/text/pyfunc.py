"""The text classifier as an MLflow pyfunc: a frame with a ``text`` column in, department and probabilities out.

Loaded with ``mlflow.pyfunc.load_model``; the model folder travels as the
pyfunc's ``model_dir`` artifact and is read by ``TextClassifierPredictor``.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

PREDICTION_COLUMN = "department"


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor

        self.predictor = TextClassifierPredictor.load(context.artifacts["model_dir"])

    @staticmethod
    def predictions(predictor: Any, model_input: pd.DataFrame) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist()
        probabilities = predictor.predict_proba(texts)
        frame = pd.DataFrame(probabilities, columns=[f"p[{c}]" for c in predictor.classes])
        frame.insert(0, PREDICTION_COLUMN, [predictor.classes[i] for i in probabilities.argmax(axis=1)])
        return frame

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictions(self.predictor, model_input)
