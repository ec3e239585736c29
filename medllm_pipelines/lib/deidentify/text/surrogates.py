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
    LOCATION,
    MRN,
    NAME,
    ORGANIZATION,
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
        maker = {NAME: self._name, ID_NUMBER: self._identifier, PHONE: self._phone, MRN: self._mrn,
                 EMAIL: self._email, ADDRESS: self._address, DATE: self._date, LOCATION: self._location,
                 ORGANIZATION: self._organization}.get(label)
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

    # --- places and organisations -----------------------------------------------------
    def _location(self, value: str) -> str:
        draw = self._draw(LOCATION, value)
        places = self.vocabulary.get("locations", {})
        if any("\u4e00" <= ch <= "\u9fff" for ch in value):
            if value.endswith(("医院", "醫院", "卫生院", "诊所", "中心")):
                return draw.pick(places.get("zh_hospitals", ["示例市人民医院"]))
            return draw.pick(places.get("zh_places", ["示例市"]))
        if re.search(r"(?i)hospital|clinic|center|centre|infirmary|medical|health|st\.|saint|memorial", value):
            return draw.pick(places.get("en_hospitals", ["Riverton General Hospital"]))
        if re.match(r"(?i)(ward|room|rm|unit|floor|bldg|building|pod|bay)\b", value):
            return _fill(value, draw.digits(sum(ch.isdigit() for ch in value)))
        return draw.pick(places.get("en_places", self.vocabulary["en_addresses"]["cities"]))

    def _organization(self, value: str) -> str:
        draw = self._draw(ORGANIZATION, value)
        orgs = self.vocabulary.get("organizations", {})
        if any("\u4e00" <= ch <= "\u9fff" for ch in value):
            return draw.pick(orgs.get("zh", ["示例有限公司"]))
        return draw.pick(orgs.get("en", ["Example Company"]))

    # --- numbers -------------------------------------------------------------------
    def _identifier(self, value: str) -> str:
        """A PRC resident ID keeps its GB 11643 shape; SSNs, cards, licences keep their layout, digits redrawn."""
        if len(_significant(value)) in (15, 18) and not any(ch.isalpha() and ch not in "Xx" for ch in value):
            return self._resident_id(value)
        draw = self._draw(ID_NUMBER, value.upper())
        out = []
        for ch in value:
            if ch.isdigit():
                out.append(str(draw.below(10)))
            elif ch.isascii() and ch.isalpha():
                letter = chr(ord("A") + draw.below(26))
                out.append(letter if ch.isupper() else letter.lower())
            else:
                out.append(ch)
        new = "".join(out)
        if re.fullmatch(r"\d{3}-\d{2}-\d{4}", value):  # an SSN: area 900-999 is never issued
            new = "9" + new[1:]
        return new if new != value else _fill(value, "0" * len(value))

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


_TIME_SUFFIX = re.compile(r"(,?\s*(?:at\s+|@\s*)?\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AaPp]\.?[Mm]\.?)?"
                          r"|\s+\d{1,2}\s*[AaPp]\.?[Mm]\.?)$")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEEKDAY_WORD = re.compile(r"(?i)(mon|tue|wed|thu|fri|sat|sun)[a-z]*")
_MONTH_WORD = re.compile(
    r"(?:(?P<weekday>[A-Za-z]+day),?\s+)?"
    r"(?:(?P<lead>the\s+)?(?P<day1>\d{1,2})(?P<suf1>st|nd|rd|th)?(?P<of1>\s+of)?\s+(?P<month1>[A-Za-z]+)(?P<dot1>\.?)"
    r"|(?P<month2>[A-Za-z]+)(?P<dot2>\.?)(?:\s+(?P<the2>the\s+)?(?P<day2>\d{1,2})(?P<suf2>st|nd|rd|th)?)?)"
    r"(?:(?P<comma>,?)(?P<sep>\s+)(?P<of2>of\s+)?(?P<year>\d{4})|\s*(?P<apos>['’])(?P<yy>\d{2})|-(?P<dashyy>\d{2}))?")
_REFERENCE_YEAR = 2001  # a date without a year is shifted within a non-leap reference year


def _full_year(two_digits: int) -> int:
    return 2000 + two_digits if two_digits <= (date.today().year % 100) + 1 else 1900 + two_digits


def _month_name(month: int, like: str) -> str:
    name = _MONTHS[month - 1]
    name = name[:len(like)] if len(like) <= 3 or (len(like) == 4 and like.lower().startswith("sept")) else name
    if like.isupper():
        return name.upper()
    if like.islower():
        return name.lower()
    return name


def _shift_words(value: str, days: int) -> str | None:
    """Month names with or without day and year; weekdays; years alone and 'yy."""
    weekday_alone = _WEEKDAY_WORD.fullmatch(value.split()[0]) if value.split() else None
    if weekday_alone and len(value.split()) <= 2 and not any(ch.isdigit() for ch in value):
        word = value.split()[0]
        index = ("mon", "tue", "wed", "thu", "fri", "sat", "sun").index(weekday_alone.group(1).lower())
        new = _WEEKDAYS[(index + days) % 7]
        new = new[:len(word)] if len(word) <= 4 else new + ("s" if word.lower().endswith("days") else "")
        new = new.upper() if word.isupper() else new.lower() if word.islower() else new
        return new + value[len(word):]
    year_alone = re.fullmatch(r"((?:19|20)\d{2})('?s)?|['’](\d{2})", value)
    if year_alone:
        year = int(year_alone.group(1)) if year_alone.group(1) else _full_year(int(year_alone.group(3)))
        moved = (date(year, 7, 1) + timedelta(days=days)).year
        if year_alone.group(1):
            return f"{moved}{year_alone.group(2) or ''}"
        return f"{value[0]}{moved % 100:02d}"
    match = _MONTH_WORD.fullmatch(value)
    if not match:
        return None
    month_word = match.group("month1") or match.group("month2")
    month = _MONTH_NUMBER.get(month_word[:3].lower())
    if month is None:
        return None
    day_text = match.group("day1") or match.group("day2")
    if match.group("year"):
        year = int(match.group("year"))
    elif match.group("yy") or match.group("dashyy"):
        year = _full_year(int(match.group("yy") or match.group("dashyy")))
    else:
        year = None
    try:
        base = date(year or _REFERENCE_YEAR, month, int(day_text) if day_text else 15)
    except ValueError:
        return None
    moved = base + timedelta(days=days)
    name = _month_name(moved.month, month_word)
    if match.group("month1"):
        day_part = f"{match.group('lead') or ''}{moved.day}{_ordinal(moved.day) if match.group('suf1') else ''}"
        text = f"{day_part}{match.group('of1') or ''} {name}{match.group('dot1')}"
    else:
        text = f"{name}{match.group('dot2')}"
        if day_text:
            suffix = _ordinal(moved.day) if match.group("suf2") else ""
            text += f" {match.group('the2') or ''}{moved.day}{suffix}"
    if match.group("year"):
        text += f"{match.group('comma')}{match.group('sep')}{match.group('of2') or ''}{moved.year}"
    elif match.group("yy"):
        text += f"{match.group('apos')}{moved.year % 100:02d}"
    elif match.group("dashyy"):
        text += f"-{moved.year % 100:02d}"
    if match.group("weekday"):
        text = f"{_WEEKDAYS[moved.weekday()]}, {text}" if year else text
    return text


def _shift_numeric_short(value: str, parts: list[re.Match[str]], days: int) -> str | None:
    """m/d/yy, m/d (no year), m/yy, m/yyyy and M月D日: the same layout, shifted."""
    numbers = [int(p.group()) for p in parts]
    try:
        if len(parts) == 3 and numbers[2] < 100:  # m/d/yy (or d.m.yy when the first cannot be a month)
            month_first = numbers[0] <= 12
            month, day = (numbers[0], numbers[1]) if month_first else (numbers[1], numbers[0])
            moved = date(_full_year(numbers[2]), month, day) + timedelta(days=days)
            new = [moved.month, moved.day, moved.year % 100] if month_first else [moved.day, moved.month, moved.year % 100]
        elif len(parts) == 2 and (numbers[1] > 31 or len(parts[1].group()) == 4 or "年" in value):
            year = numbers[1] if len(parts[1].group()) == 4 else _full_year(numbers[1])
            if "年" in value:
                year, month = numbers[0], numbers[1]
            else:
                month = numbers[0]
            moved = date(year, month, 15) + timedelta(days=days)
            new = [moved.year, moved.month] if "年" in value else [moved.month, moved.year if len(parts[1].group()) == 4 else moved.year % 100]
        elif len(parts) == 2:  # m/d or M月D日, no year
            month, day = numbers
            moved = date(2000 if (month, day) == (2, 29) else _REFERENCE_YEAR, month, day) + timedelta(days=days)
            new = [moved.month, moved.day]
        else:
            return None
    except ValueError:
        return None
    out, last = [], 0
    for index, part in enumerate(parts):
        out.append(value[last:part.start()])
        width = len(part.group())
        out.append(f"{new[index]:0{width}d}" if part.group().startswith("0") or width == 2 else str(new[index]))
        last = part.end()
    out.append(value[last:])
    return "".join(out)


def shift_date_text(value: str, days: int) -> str | None:
    """``value`` moved by ``days`` in its own format (None when it is not a parseable date).

    Full dates, dates without a year (3/14, Jan 5, 3月5日: shifted within a
    reference year), month and year (3/80, January of 2020), years alone and
    'yy (the year of 1 July shifted), weekdays (moved by ``days`` mod 7); a
    time after the date is kept. Relative Chinese dates (去年十月, 上周三) and
    numerals in Han script return None: the caller writes a placeholder.
    """
    stripped = value.strip()
    time_suffix = _TIME_SUFFIX.search(stripped)
    if time_suffix and time_suffix.start() > 0:
        shifted = shift_date_text(stripped[:time_suffix.start()], days)
        return None if shifted is None else shifted + time_suffix.group()
    english = _EN_DATE.fullmatch(stripped)
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
    if any(ch.isalpha() and ch.isascii() for ch in stripped) or stripped[:1] in "'’":
        return _shift_words(stripped, days)
    parts = list(_DIGITS.finditer(value))
    if len(parts) == 1 and re.fullmatch(r"(?:19|20)\d{2}('?s)?", stripped):
        return _shift_words(stripped, days)
    if len(parts) not in (2, 3):
        return None
    numbers = [int(p.group()) for p in parts]
    if len(parts) == 2 or (numbers[2] < 100 and numbers[0] < 100):
        return _shift_numeric_short(value, parts, days)
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
