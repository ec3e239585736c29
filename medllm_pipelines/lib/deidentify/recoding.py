"""Recoding quasi-identifiers: the generalisation hierarchies and local recoding to k (clause 5.4.1.3, row S3).

Coarser values put more people in each equivalence class (``risk``), so fewer
rows have to be suppressed to reach k:

* the hierarchies: an age band widened (``45-49`` -> ``40-49``; ``85-89`` ->
  ``80+`` under a top code; ages become bands in ``policy.age_band``), a full
  address reduced to its province or US state, a GB/T 2260 code to its province;
* :func:`recode_to_k` applies a declared sequence of :class:`RecodingStep`
  (from the policy's ``disclosure_control``) only to the rows still in a class
  below k, and suppresses whole rows only as the last resort.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medllm_pipelines.lib.deidentify.risk import KAnonymityReport, check_quasi_identifiers, k_anonymity

__all__ = [
    "RecodingResult",
    "RecodingStep",
    "address_to_region",
    "generalise_addresses",
    "recode_to_k",
    "region_code_to_province",
    "suppress_value",
    "widen_age_band",
]


# --- generalisation: age bands -------------------------------------------------------------
_BAND = re.compile(r"^(\d+)(?:-(\d+)|\+)$")


def widen_age_band(band: str | None, width: int, top: int | None = None) -> str | None:
    """A coarser band holding ``band``: ``45-49`` -> ``40-49`` (width 10); top-coded bands stay.

    A widened band that would reach ``top`` becomes open-ended (``80+``).
    """
    if band is None or (isinstance(band, float) and pd.isna(band)):
        return None
    match = _BAND.match(str(band))
    if not match:
        raise ValueError(f"not an age band: {band!r}")
    if match.group(2) is None:
        return str(band)
    low = (int(match.group(1)) // width) * width
    high = low + width - 1
    if top is not None and high >= top:
        return f"{low}+"
    return f"{low}-{high}"


# --- generalisation: addresses -> region -------------------------------------------------
# GB/T 2260 provincial-level divisions: code prefix, full name, short name.
_PROVINCES: tuple[tuple[str, str, str], ...] = (
    ("11", "北京市", "北京"), ("12", "天津市", "天津"), ("13", "河北省", "河北"), ("14", "山西省", "山西"),
    ("15", "内蒙古自治区", "内蒙古"), ("21", "辽宁省", "辽宁"), ("22", "吉林省", "吉林"),
    ("23", "黑龙江省", "黑龙江"), ("31", "上海市", "上海"), ("32", "江苏省", "江苏"), ("33", "浙江省", "浙江"),
    ("34", "安徽省", "安徽"), ("35", "福建省", "福建"), ("36", "江西省", "江西"), ("37", "山东省", "山东"),
    ("41", "河南省", "河南"), ("42", "湖北省", "湖北"), ("43", "湖南省", "湖南"), ("44", "广东省", "广东"),
    ("45", "广西壮族自治区", "广西"), ("46", "海南省", "海南"), ("50", "重庆市", "重庆"), ("51", "四川省", "四川"),
    ("52", "贵州省", "贵州"), ("53", "云南省", "云南"), ("54", "西藏自治区", "西藏"), ("61", "陕西省", "陕西"),
    ("62", "甘肃省", "甘肃"), ("63", "青海省", "青海"), ("64", "宁夏回族自治区", "宁夏"),
    ("65", "新疆维吾尔自治区", "新疆"), ("71", "台湾省", "台湾"), ("81", "香港特别行政区", "香港"),
    ("82", "澳门特别行政区", "澳门"),
)
# Provincial capitals and other large cities, for addresses that start below province level.
_CITY_PROVINCE: dict[str, str] = {
    "石家庄": "13", "太原": "14", "呼和浩特": "15", "包头": "15", "沈阳": "21", "大连": "21", "长春": "22",
    "哈尔滨": "23", "南京": "32", "苏州": "32", "无锡": "32", "杭州": "33", "宁波": "33", "温州": "33",
    "合肥": "34", "福州": "35", "厦门": "35", "南昌": "36", "济南": "37", "青岛": "37", "郑州": "41",
    "洛阳": "41", "武汉": "42", "宜昌": "42", "襄阳": "42", "黄石": "42", "荆州": "42", "长沙": "43",
    "广州": "44", "深圳": "44", "东莞": "44", "佛山": "44", "南宁": "45", "海口": "46", "三亚": "46",
    "成都": "51", "贵阳": "52", "昆明": "53", "拉萨": "54", "西安": "61", "兰州": "62", "西宁": "63",
    "银川": "64", "乌鲁木齐": "65",
}
_BY_CODE = {code: full for code, full, _ in _PROVINCES}
_PREFIXES: tuple[tuple[str, str], ...] = tuple(
    sorted(
        [(full, full) for _, full, _ in _PROVINCES]
        + [(short, full) for _, full, short in _PROVINCES]
        + [(city, _BY_CODE[code]) for city, code in _CITY_PROVINCE.items()],
        key=lambda pair: -len(pair[0]),
    )
)
_COUNTRY_PREFIX = re.compile(r"^\s*(中华人民共和国|中国)\s*")
# "..., City, ST 12345" (the US form the synthetic hospital writes)
_US_STATE = re.compile(r",\s*([A-Z]{2})\s+\d{5}(?:-\d{4})?\s*$")


def region_code_to_province(code: str | None) -> str | None:
    """GB/T 2260 administrative code (6 digits, or a resident ID's first 6) -> province."""
    if not code or len(str(code)) < 2:
        return None
    return _BY_CODE.get(str(code)[:2])


def address_to_region(address: str | None) -> str | None:
    """Generalise a full address to its region: the province for Chinese addresses,
    ``US-<state>`` for US ones; None when no region is recognised (suppress those)."""
    if address is None or (isinstance(address, float) and pd.isna(address)):
        return None
    text = _COUNTRY_PREFIX.sub("", str(address))
    for prefix, province in _PREFIXES:
        if text.startswith(prefix):
            return province
    match = _US_STATE.search(text)
    if match:
        return f"US-{match.group(1)}"
    return None


def generalise_addresses(addresses: pd.Series) -> pd.Series:
    """:func:`address_to_region` over a column (the original column must then be dropped)."""
    return addresses.map(address_to_region).astype("string")


# --- local recoding: keep every row, coarsen only the rare ones ----------------------------
@dataclass(frozen=True)
class RecodingStep:
    """One coarsening of one quasi-identifier, applied only to rows still in a class below k.

    ``recode`` maps a value to a coarser one; ``None`` (missing) is suppression.
    """

    column: str
    name: str
    recode: Callable[[Any], Any]


def suppress_value(_: Any) -> None:
    """The last step of a hierarchy: the value is not released (missing)."""
    return None


@dataclass
class RecodingResult:
    frame: pd.DataFrame
    k: int
    cells_recoded: dict[str, int]  # "column:step" -> cells changed by that step
    cells_padded: int  # cells coarsened in rows of classes >= k to complete a class below k
    rows_suppressed: int
    rows_in: int
    report_in: KAnonymityReport  # of the input frame
    report: KAnonymityReport  # of the returned frame

    @property
    def cells_suppressed(self) -> int:
        return sum(n for step, n in self.cells_recoded.items() if step.endswith(":suppress")) + self.cells_padded

    def as_metadata(self) -> dict[str, Any]:
        """Counts only, like :meth:`KAnonymityReport.as_metadata`."""
        return {"k_required": self.k, "k_before": self.report_in.smallest_class,
                "classes_below_k_before": len(self.report_in.classes_below_k),
                "rows_in": self.rows_in, "rows_suppressed": self.rows_suppressed,
                "cells_recoded": sum(self.cells_recoded.values()) + self.cells_padded,
                "cells_suppressed": self.cells_suppressed, "cells_padded": self.cells_padded,
                **{f"cells_recoded[{step}]": n for step, n in self.cells_recoded.items()},
                **self.report.as_metadata()}


def _below_k_mask(frame: pd.DataFrame, quasi_identifiers: Sequence[str], k: int) -> pd.Series:
    sizes = frame.groupby(list(quasi_identifiers), dropna=False, observed=True)[quasi_identifiers[0]].transform("size")
    return sizes < k


def _same(left: Any, right: Any) -> bool:
    return (pd.isna(left) and pd.isna(right)) if (pd.isna(left) or pd.isna(right)) else left == right


def recode_to_k(frame: pd.DataFrame, quasi_identifiers: Sequence[str], k: int,
                steps: Sequence[RecodingStep]) -> RecodingResult:
    """A k-anonymous copy of ``frame`` that keeps rows wherever it can (local recoding).

    Unlike :func:`suppress_to_k` (global value suppression, then whole rows),
    rows already in a class of k are left alone:

    1. each step in order coarsens its column in the rows still below k
       (a wider age band, then a missing value, ...);
    2. a class still below k whose rows went through every step is completed
       with rows of the same un-recoded values taken from the largest classes
       (each donor class keeps at least k), coarsened the same way;
    3. rows still below k are dropped (record suppression), as the last resort.

    Quasi-identifiers without a step are never changed. Missing marks a
    suppressed cell: downstream code reads it as "not released".
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    check_quasi_identifiers(frame, quasi_identifiers)
    unknown = sorted({s.column for s in steps} - set(quasi_identifiers))
    if unknown:
        raise ValueError(f"recoding steps name columns that are not quasi-identifiers: {unknown}")
    report_in = k_anonymity(frame, quasi_identifiers, k=k)
    out = frame.reset_index(drop=True).copy()
    for column in {s.column for s in steps}:
        out[column] = out[column].astype(object)
    recoded: dict[str, int] = {}
    for step in steps:
        below = _below_k_mask(out, quasi_identifiers, k) if len(out) else pd.Series(dtype=bool)
        if not below.any():
            break
        before = out.loc[below, step.column]
        after = before.map(lambda v, recode=step.recode: recode(v) if pd.notna(v) else None)
        changed = int(sum(not _same(a, b) for a, b in zip(before, after, strict=True)))
        out.loc[below, step.column] = after
        if changed:
            recoded[f"{step.column}:{step.name}"] = recoded.get(f"{step.column}:{step.name}", 0) + changed

    def fully_recoded(row: pd.Series) -> tuple:
        values = dict(row)
        for step in steps:
            if pd.notna(values[step.column]):
                values[step.column] = step.recode(values[step.column])
        return tuple(values[c] for c in quasi_identifiers)

    padded = 0
    below = _below_k_mask(out, quasi_identifiers, k) if len(out) else pd.Series(dtype=bool)
    if below.any() and steps:
        qi = list(quasi_identifiers)
        targets = out.loc[below, qi].drop_duplicates()
        for _, target in targets.iterrows():
            target_key = tuple(target[c] for c in qi)
            if fully_recoded(target) != target_key:
                continue  # not at the end of its recoding chain: nothing to pad it with
            members = out[qi].apply(lambda r, t=target_key: all(_same(a, b) for a, b in zip(r, t, strict=True)), axis=1)
            need = k - int(members.sum())
            if need <= 0:
                continue
            sizes = out[~members].groupby(qi, dropna=False, observed=True).size().sort_values(ascending=False, kind="stable")
            donors: list[int] = []
            for donor_key, size in sizes.items():
                donor_key = donor_key if isinstance(donor_key, tuple) else (donor_key,)
                spare = int(size) - k
                if spare <= 0 or need - len(donors) <= 0:
                    continue
                rows = out.index[out[qi].apply(
                    lambda r, d=donor_key: all(_same(a, b) for a, b in zip(r, d, strict=True)), axis=1)]
                if fully_recoded(out.loc[rows[0]]) != target_key:
                    continue
                donors.extend(rows[-min(spare, need - len(donors)):].tolist())
            if len(donors) < need:
                continue
            for index in donors:
                for column, value in zip(qi, target_key, strict=True):
                    if not _same(out.at[index, column], value):
                        out.at[index, column] = value
                        padded += 1
    below = _below_k_mask(out, quasi_identifiers, k) if len(out) else pd.Series(dtype=bool)
    result = out.loc[~below].reset_index(drop=True) if len(out) else out
    return RecodingResult(
        frame=result,
        k=k,
        cells_recoded=recoded,
        cells_padded=padded,
        rows_suppressed=int(below.sum()) if len(out) else 0,
        rows_in=len(frame),
        report_in=report_in,
        report=k_anonymity(result, quasi_identifiers, k=k),
    )
