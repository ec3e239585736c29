"""Readable, type-preserving surrogates, consistent under a key.

A detected identifier is replaced by a fake one of the same type and shape:
a Chinese name by a Chinese name of the same length, a resident ID by an ID
with a valid GB 11643 check character (same sex digit parity), a phone by a
phone in the same layout (Chinese mobiles keep a real plan prefix, North
American numbers go to the reserved 555-01xx range), a date shifted by the
patient's offset in the same format. Which surrogate is chosen comes from a
keyed digest of the original (``keyed(value) -> str``; the platform passes
Vault transit HMAC), so the same value always gets the same surrogate under
the same key and scope, and nobody without the key can recompute the mapping
from a list of candidate names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medllm_pipelines.lib.deidentify.text.patterns import (
    default_pattern_config,
    resident_id_check_char,
)
from medllm_pipelines.lib.deidentify.text.spans import (
    ADDRESS,
    DATE,
    EMAIL,
    ID_NUMBER,
    MRN,
    NAME,
    PHONE,
    Span,
)

SURROGATES_PATH = Path(__file__).with_name("surrogates.yaml")
KeyedDigest = Callable[[str], str]
SurrogateFor = Callable[[str, str], str]

_LATIN_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_DIGITS = re.compile(r"\d+")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_MONTH_NUMBER = {m[:3].lower(): i + 1 for i, m in enumerate(_MONTHS)}
_EN_DATE = re.compile(r"([A-Za-z]+)(\.?) (\d{1,2})(st|nd|rd|th)?(,?) (\d{4})|(\d{1,2}) ([A-Za-z]+)(\.?)(,?) (\d{4})")


@lru_cache(maxsize=1)
def _vocabulary() -> dict[str, Any]:
    raw = yaml.safe_load(SURROGATES_PATH.read_text(encoding="utf-8"))
    raw["zh_surnames"] = [ch for ch in raw["zh_surnames"] if not ch.isspace()]
    raw["zh_given_chars"] = [ch for ch in raw["zh_given_chars"] if not ch.isspace()]
    return raw


def surrogate_vocabulary_version() -> str:
    return str(_vocabulary()["version"])


def _digest_int(keyed: KeyedDigest, message: str) -> int:
    """A 256-bit integer from the keyed digest, whatever its encoding (hex, base64, vault:v1:...)."""
    return int.from_bytes(hashlib.sha256(keyed(message).encode("utf-8")).digest(), "big")


def patient_date_shift(keyed: KeyedDigest, patient_pseudonym: str, max_days: int = 365) -> int:
    """A per-patient date offset in [-max_days, max_days] without 0, the same for text and DICOM."""
    value = _digest_int(keyed, f"date-shift\x1f{patient_pseudonym}") % (2 * max_days)
    return value - max_days if value < max_days else value - max_days + 1


class _Draw:
    """Successive choices from one digest."""

    def __init__(self, value: int) -> None:
        self.value = value

    def below(self, n: int) -> int:
        choice = self.value % n
        self.value //= n
        if self.value < n * 1000:  # refill deterministically when running low
            self.value = int.from_bytes(hashlib.sha256(str(self.value).encode()).digest(), "big") + self.value
        return choice

    def pick(self, items: list[Any] | tuple[Any, ...]) -> Any:
        return items[self.below(len(items))]

    def digits(self, n: int) -> str:
        return "".join(str(self.below(10)) for _ in range(n))


def _is_fullwidth_digit(ch: str) -> bool:
    return "\uff10" <= ch <= "\uff19"


def _fill(template: str, replacement: str, *, check_char: bool = False) -> str:
    """Put ``replacement`` into the digit positions (and an ID's X) of ``template``, keeping its layout."""
    out, it = [], iter(replacement)
    for ch in template:
        if ch.isdigit() or (check_char and ch in "Xx\uff38\uff58"):
            new = next(it, "0")
            if _is_fullwidth_digit(ch) or ch in "\uff38\uff58":
                new = chr(ord(new) + 0xFEE0) if new.isascii() and new != " " else new
            out.append(new)
        else:
            out.append(ch)
    return "".join(out)


def _significant(value: str) -> str:
    folded = value.translate({c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)})
    return "".join(ch for ch in folded if ch.isdigit() or ch in "Xx").upper()


class SurrogateFactory:
    """``surrogate_for(label, value)``: the replacement of one detected value.

    Args:
        keyed: keyed digest of a string (Vault transit HMAC in the platform;
            any deterministic keyed function in tests). Called once per
            distinct (label, value) per factory; results are cached.
        scope: mixed into every digest. Empty: the same name gets the same
            surrogate across patients (linkable under the key); a patient
            pseudonym: consistent within that patient only.
        date_shift_days: offset for dates; None derives the patient's offset
            from ``keyed`` and ``scope`` (see ``patient_date_shift``).
    """

    def __init__(self, keyed: KeyedDigest, *, scope: str = "", date_shift_days: int | None = None) -> None:
        self.keyed = keyed
        self.scope = scope
        self.date_shift_days = (patient_date_shift(keyed, scope) if date_shift_days is None
                                else int(date_shift_days))
        self.vocabulary = _vocabulary()
        self._cache: dict[tuple[str, str], str] = {}
        config = default_pattern_config()
        self._given_names = config.en_given_names | frozenset(self.vocabulary["en_given_names"])

    def __call__(self, label: str, value: str) -> str:
        key = (label, value)
        found = self._cache.get(key)
        if found is None:
            found = self._make(label, value)
            self._cache[key] = found
        return found

    def _draw(self, label: str, canonical: str) -> _Draw:
        return _Draw(_digest_int(self.keyed, f"{label}\x1f{self.scope}\x1f{canonical}"))

    def _make(self, label: str, value: str) -> str:
        maker = {NAME: self._name, ID_NUMBER: self._resident_id, PHONE: self._phone, MRN: self._mrn,
                 EMAIL: self._email, ADDRESS: self._address, DATE: self._date}.get(label)
        if maker is None:
            return f"[{label}]"
        return maker(value)

    # --- names ---------------------------------------------------------------------
    def _name(self, value: str) -> str:
        if any("\u4e00" <= ch <= "\u9fff" for ch in value):
            return self._han_name(value)
        return _LATIN_TOKEN.sub(lambda m: self._latin_token(m.group()), value)

    def _han_name(self, value: str) -> str:
        han = "".join(ch for ch in value if "\u4e00" <= ch <= "\u9fff")
        given_length = max(1, len(han) - 1)  # a one-character surname: the length is kept
        vocab = self.vocabulary
        for attempt in range(8):
            draw = self._draw(NAME, f"{han}\x1f{attempt}")
            candidate = draw.pick(vocab["zh_surnames"]) + "".join(
                draw.pick(vocab["zh_given_chars"]) for _ in range(given_length))
            if candidate != han:
                return candidate
        return candidate

    def _latin_token(self, token: str) -> str:
        pool = "en_given_names" if token.capitalize() in self._given_names else "en_family_names"
        names = self.vocabulary[pool]
        for attempt in range(8):
            candidate = self._draw("NAME_TOKEN", f"{token.casefold()}\x1f{attempt}").pick(names)
            if candidate.casefold() != token.casefold():
                break
        if token.isupper() and len(token) > 1:
            return candidate.upper()
        if token.islower():
            return candidate.lower()
        return candidate

    # --- numbers -------------------------------------------------------------------
    def _resident_id(self, value: str) -> str:
        compact = _significant(value)
        sex_odd = len(compact) >= 17 and compact[16].isdigit() and int(compact[16]) % 2 == 1
        new = compact
        for attempt in range(8):
            draw = self._draw(ID_NUMBER, f"{compact}\x1f{attempt}")
            region = draw.pick(self.vocabulary["id_regions"])
            born = date(1940, 1, 1) + timedelta(days=draw.below(365 * 65))
            sequence = draw.below(500) * 2 + (1 if sex_odd else 0)
            if len(compact) == 15:
                new = f"{region}{born:%y%m%d}{sequence:03d}"
            else:
                body = f"{region}{born:%Y%m%d}{sequence:03d}"
                new = body + resident_id_check_char(body)
            if new != compact:
                break
        return _fill(value, new, check_char=True)

    def _phone(self, value: str) -> str:
        digits = _significant(value).replace("X", "")
        folded = value.translate({c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}).lstrip()
        keep = 0
        if folded.startswith(("+86", "0086")):
            keep = 2 if folded.startswith("+") else 4
        elif folded.startswith(("+1", "001")):
            keep = 1 if folded.startswith("+") else 3
        national = digits[keep:]
        draw = self._draw(PHONE, digits)
        if len(national) >= 11 and national[0] == "1" and national[1] in "3456789":
            new = "1" + draw.pick("3456789") + draw.digits(len(national) - 2)
        elif len(national) >= 10 and national[0] != "0" and not folded.startswith(("+86", "0086")):
            new = str(2 + draw.below(8)) + draw.digits(2) + "55501" + draw.digits(2) + draw.digits(len(national) - 10)
        elif national[:1] == "0":
            new = "0" + draw.digits(len(national) - 1)
        else:
            new = draw.digits(len(national))
        if new == national:
            new = new[:-1] + str((int(new[-1]) + 1) % 10)
        return _fill(value, digits[:keep] + new)

    def _mrn(self, value: str) -> str:
        digits = _significant(value).replace("X", "")
        draw = self._draw(MRN, value.upper())
        new = draw.digits(len(digits))
        if digits[:1] not in ("", "0") and new[:1] == "0":
            new = str(1 + draw.below(9)) + new[1:]
        if new == digits:
            new = new[:-1] + str((int(new[-1]) + 1) % 10)
        return _fill(value, new)

    def _email(self, value: str) -> str:
        draw = self._draw(EMAIL, value.lower())
        local = draw.pick(self.vocabulary["en_given_names"]).lower() + draw.digits(2)
        return f"{local}@{self.vocabulary['email_domain']}"

    def _address(self, value: str) -> str:
        draw = self._draw(ADDRESS, value)
        if any("\u4e00" <= ch <= "\u9fff" for ch in value):
            zh = self.vocabulary["zh_addresses"]
            province, city, district = draw.pick(zh["provinces"])
            text = f"{province}{city}{district}{draw.pick(zh['streets'])}{1 + draw.below(300)}号"
            if "室" in value:
                text += f"{1 + draw.below(20)}栋{1 + draw.below(30)}0{1 + draw.below(4)}室"
            return text
        en = self.vocabulary["en_addresses"]
        text = f"{1 + draw.below(9899)} {draw.pick(en['streets'])} {draw.pick(en['suffixes'])}"
        if "," in value:
            text += f", {draw.pick(en['cities'])}, {draw.pick(en['states'])} {draw.digits(5)}"
        return text

    # --- dates ---------------------------------------------------------------------
    def _date(self, value: str) -> str:
        shifted = shift_date_text(value, self.date_shift_days)
        return shifted if shifted is not None else "[DATE]"


def shift_date_text(value: str, days: int) -> str | None:
    """``value`` moved by ``days`` in its own format (None when it is not a parseable date)."""
    english = _EN_DATE.fullmatch(value.strip())
    if english:
        if english.group(1):
            month_word, dot, day, suffix, comma, year = english.group(1, 2, 3, 4, 5, 6)
        else:
            day, month_word, dot, comma, year = english.group(7, 8, 9, 10, 11)
            suffix = None
        month = _MONTH_NUMBER.get(month_word[:3].lower())
        if month is None:
            return None
        try:
            moved = date(int(year), month, int(day)) + timedelta(days=days)
        except ValueError:
            return None
        name = _MONTHS[moved.month - 1]
        name = name[:len(month_word)] if len(month_word) <= 3 else name
        if english.group(1):
            return f"{name}{dot} {moved.day}{_ordinal(moved.day) if suffix else ''}{comma} {moved.year}"
        return f"{moved.day} {name}{dot}{comma} {moved.year}"
    parts = list(_DIGITS.finditer(value))
    if len(parts) != 3:
        return None
    numbers = [int(p.group()) for p in parts]
    if 1900 <= numbers[0] <= 2099:
        order = (0, 1, 2)  # y m d
    elif 1900 <= numbers[2] <= 2099:
        order = (2, 0, 1)  # m/d/y
    else:
        return None
    try:
        moved = date(numbers[order[0]], numbers[order[1]], numbers[order[2]]) + timedelta(days=days)
    except ValueError:
        return None
    new_values = {order[0]: moved.year, order[1]: moved.month, order[2]: moved.day}
    out, last = [], 0
    for index, part in enumerate(parts):
        out.append(value[last:part.start()])
        width = len(part.group())
        number = new_values[index]
        out.append(f"{number:0{width}d}" if part.group().startswith("0") or width == 2 else str(number))
        last = part.end()
    out.append(value[last:])
    return "".join(out)


def _ordinal(day: int) -> str:
    if 11 <= day % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def replace_spans(text: str, spans: list[Span], surrogate_for: SurrogateFor) -> str:
    """``text`` with each span replaced by ``surrogate_for(label, original value)``."""
    out, last = [], 0
    for span in sorted(spans):
        if span.start < last:
            continue
        out.append(text[last:span.start])
        out.append(surrogate_for(span.label, text[span.start:span.end]))
        last = span.end
    out.append(text[last:])
    return "".join(out)


def placeholder(label: str, _value: str) -> str:
    """A surrogate_for that writes ``[LABEL]`` (when readability does not matter)."""
    return f"[{label}]"
