"""A small raw text corpus (notes, dialogues, patients of two institutions) for the free-text lib tests."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pandas as pd

from medllm_pipelines.lib.deidentify.persons import PersonIndex

NAMES = ["王建国", "李秀英", "张伟", "刘洋", "陈静", "杨磊", "赵敏", "黄勇"]
PSEUDONYM_MAP = pd.DataFrame({
    "institution": ["hzsf"] * 8 + ["rvic"], "patient_key": [f"k{i}" for i in range(8)] + ["r0"],
    "mrn": [f"MRN{i:05d}" for i in range(8)] + ["884213"], "patient_pseudonym": [f"p_{i}" for i in range(8)] + ["p_0"],
})
RAW_PATIENTS = pd.DataFrame({
    "institution": ["hzsf"] * 8 + ["rvic"], "resource_key": [f"k{i}" for i in range(8)] + ["r0"],
    "mrn": [f"MRN{i:05d}" for i in range(8)] + ["884213"], "name_zh": NAMES + [None],
    "name_en": [None] * 8 + ["Jianguo Wang"], "phone": [f"1380013800{i}" for i in range(8)] + ["(415) 555-0134"],
})
PERSONS = PersonIndex.from_map(PSEUDONYM_MAP)
NOTES = pd.DataFrame({
    "institution": ["hzsf"] * 8 + ["hzsf", "hzsf"], "patient_key": [f"k{i}" for i in range(8)] + ["k404", "k1"],
    "resource_key": [f"n{i}" for i in range(10)], "language": ["zh"] * 10,
    "text": [f"患者{n}，联系电话1380013800{i}，诉口渴多饮。" for i, n in enumerate(NAMES)] + ["患者未知。", "  "],
})
DIALOGUES = pd.DataFrame({
    "institution": ["hzsf", "hzsf", "hzsf"], "dialogue_id": ["d0", "d1", "d2"],
    "patient_mrn": ["MRN00000", "MRN00001", "MRN00002"], "language": ["zh"] * 3, "turn_count": [2, 0, 1],
    "turns_json": [orjson.dumps([{"speaker": "patient", "text": "我叫王建国。"},
                                 {"speaker": "nurse", "text": "王建国，请坐。"}]).decode(), "not json", "[]"],
})


def fake_hmac(values):
    return [hmac.new(b"k", v.encode("utf-8"), hashlib.sha256).hexdigest() for v in values]


class MemoryZone:
    """The raw zone's object and table store, in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.tables: dict[str, pd.DataFrame] = {}

    def put_object(self, sha256: str, content: bytes) -> None:
        self.objects[sha256] = content

    def get_object(self, sha256: str) -> bytes:
        return self.objects[sha256]

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        self.tables[name] = frame

    def read_table(self, name: str) -> pd.DataFrame:
        return self.tables[name]
