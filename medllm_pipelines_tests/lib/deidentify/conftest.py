"""A small synthetic hospital with its identities, its annotated free text and a trained tagger.

Generated once per session: the free-text and DICOM de-identification tests
share it (about 120 patients: a few seconds to generate, a few to train).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medllm_pipelines.lib.deidentify.text import Tagger, split_by_person, train_tagger
from medllm_pipelines.lib.synth import DefectRates, generate_hospital
from medllm_pipelines.lib.synth.note_gold import AnnotatedText, annotated_texts

DEID_HOSPITAL_PATIENTS = 120
DEID_HOSPITAL_SEED = 11
TAGGER_SEED = 0


def keyed_digest(key: bytes):
    return lambda value: hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeidHospital:
    root: Path
    identities: list[dict[str, Any]]
    texts: list[AnnotatedText]
    train: list[AnnotatedText]
    test: list[AnnotatedText]

    @property
    def dicom_files(self) -> list[Path]:
        return sorted(self.root.glob("*/dicom/*/*.dcm"))


@pytest.fixture(scope="session")
def deid_hospital(tmp_path_factory: pytest.TempPathFactory) -> DeidHospital:
    root = tmp_path_factory.mktemp("deid-hospital")
    generate_hospital(root, patients=DEID_HOSPITAL_PATIENTS, seed=DEID_HOSPITAL_SEED,
                      defect_rates=DefectRates.none(), write_identities=True)
    identities = [json.loads(line) for line in (root / "_truth/identities.jsonl").read_text("utf-8").splitlines()]
    texts = annotated_texts(root)
    train, test = split_by_person(texts, lambda t: t.person_index, test_fraction=0.3, seed=TAGGER_SEED)
    return DeidHospital(root, identities, texts, train, test)


@pytest.fixture(scope="session")
def trained_tagger(deid_hospital: DeidHospital) -> Tagger:
    train = deid_hospital.train
    return train_tagger([t.text for t in train], [t.spans for t in train], seed=TAGGER_SEED)
