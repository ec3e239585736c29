"""The note generator as an MLflow pyfunc: a frame with ``dialogue`` and ``language`` in, ``note`` and
``icd10_codes`` out.

Loaded with ``mlflow.pyfunc.load_model``; the model folder travels as the pyfunc's ``model_dir`` artifact and is
read by ``NoteGeneratorPredictor`` (no Lightning). The LoRA variant (``NoteLoraGeneratorModel``) carries only the
adapter folder (``adapter_dir``); the base checkpoint stays where the operator put it and is read from the path
recorded in the adapter's ``note_lora.json`` (the serving host needs the same checkpoint at the same path).
``note`` is the generated text as written (``render_note`` layout); ``icd10_codes`` the codes of its assessment,
comma-joined, as ``parse_note`` reads them.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

INPUT_COLUMNS = ("dialogue", "language")
OUTPUT_COLUMNS = ("note", "icd10_codes")
# Written for the signature, never a patient's words: an input example is stored in the artifact store in clear.
INPUT_EXAMPLE_DIALOGUE = (
    "Doctor: What brings you in today?\n"
    "Patient: I have had a dry cough and a mild fever for three days.\n"
    "Doctor: Any chest pain or shortness of breath?"
)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"dialogue": [INPUT_EXAMPLE_DIALOGUE], "language": ["en"]})


class NoteGeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from medllm_pipelines.lib.train.generative.note_predictor import NoteGeneratorPredictor

        self.predictor = NoteGeneratorPredictor.load(context.artifacts["model_dir"])

    @staticmethod
    def predictions(predictor: Any, model_input: pd.DataFrame) -> pd.DataFrame:
        from medllm_pipelines.lib.common.structured_note import parse_note

        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"note generator input lacks column(s) {missing}; it needs {list(INPUT_COLUMNS)}")
        languages = model_input["language"].astype(str).str.lower().tolist()
        unknown = sorted(set(languages) - {"en", "zh"})
        if unknown:
            raise ValueError(f"note generator languages are en and zh, got {unknown}")
        notes = predictor.generate_many(model_input["dialogue"].astype(str).tolist(), languages)
        codes = [",".join(parse_note(note, language=language).icd10_codes)
                 for note, language in zip(notes, languages, strict=True)]
        return pd.DataFrame({"note": notes, "icd10_codes": codes})

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictions(self.predictor, model_input)


class NoteLoraGeneratorModel(NoteGeneratorModel):
    """The same input and output, from the operator's base checkpoint with the logged adapter merged."""

    def load_context(self, context: Any) -> None:
        from medllm_pipelines.lib.train.generative.note_lora import NoteLoraPredictor

        self.predictor = NoteLoraPredictor.load(context.artifacts["adapter_dir"])
