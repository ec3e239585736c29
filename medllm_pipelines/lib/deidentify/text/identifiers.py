"""Identifiers and phone numbers written in prose: US SSNs, licences, accounts, cards, IBANs, Taiwanese IDs.

Each needs more than a shape: a checksum (Luhn, IBAN mod 97, the Taiwanese
ID's weighted check digit), the SSA's rules for an SSN, or a cue before it
("acct #", "pager"); a record number only in a header column of its own.
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.spans import ID_NUMBER, MRN, PHONE, Span

# cheap substring tests before the cue regexes run (most notes have none of these words)
_IDENTIFIER_GATES: dict[str, tuple[str, ...]] = {
    "ssn": ("ssn", "ss#", "ss no", "social", "soc sec", "soc. sec"),
    "licence": ("licen", "dl", "passport", "lic"),
    "account": ("account", "acct", "a/c", "policy", "member", "subscriber", "group", "insurance", "medicare",
                "medicaid", "plan", "beneficiary", "certificate", "serial", "vin", "device"),
    "phone": ("phone", "tel", "mobile", "cell", "fax", "desk", "office", "home", "work", "call", "message", "text",
              "answering", "registered", "reach", "contact", "number", "pager", "beeper", "电话", "手机", "電話", "手機"),
    "pager": ("pager", "beeper", "pgr", "bpr", "pg", "fax", "ext"),
}
_IDENTIFIER_GATE_RES = {name: re.compile("|".join(map(re.escape, words))) for name, words in _IDENTIFIER_GATES.items()}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(value: str) -> bool:
    compact = value.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


_TW_LETTERS = {ch: v for ch, v in zip("ABCDEFGHJKLMNPQRSTUVXYWZIO", range(10, 36), strict=True)}


def is_valid_taiwan_id(value: str) -> bool:
    """Taiwan national ID (A123456789): letter for the region, 1/2 for sex, weighted check digit."""
    if not re.fullmatch(r"[A-Z][12]\d{8}", value):
        return False
    code = _TW_LETTERS[value[0]]
    digits = [code // 10, code % 10] + [int(ch) for ch in value[1:]]
    weights = [1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1]
    return sum(d * w for d, w in zip(digits, weights, strict=True)) % 10 == 0


def _valid_ssn(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


class IdentifierRecogniser:
    """Validated or cued identifiers and phone numbers in running text."""

    def __init__(self) -> None:
        self._phone_intl = re.compile(r"(?<![\w+])(\+\d{1,3}[ \-.]?(?:\(0\)[ ]?)?\(?\d{1,4}\)?(?:[ \-.]?\d{2,4}){1,5})(?![\w])")
        self._phone_groups = re.compile(r"(?<![\w.+/:])((?:\(\d{2,5}\)[ ]?|\d{2,5}[ \-.])\d{2,5}(?:[ \-.]\d{2,5}){0,3})(?![\w]|[.,]\d)")
        self._phone_context = re.compile(
            r"(?i:phone|tel\b|telephone|mobile|cell|fax|desk|office|home|work|call|calling|messages?|text|answering|"
            r"registered|reach|contact|number|pager|beeper|电话|手机|電話|手機)[^\n\d]{0,24}\n?[^\n\d]{0,4}$")
        self._phone_after = re.compile(r"^[ \-]*(?i:office|fax|mobile|cell|home|work|desk|phone)\b")
        # identifiers
        self._ssn = re.compile(r"(?<![\d\-])(\d{3})([\- ])(\d{2})\2(\d{4})(?![\d\-])")
        self._ssn_cue = re.compile(r"(?i:\b(?:ssn|ss#|ss no\.?|soc(?:ial)?\.?\s*sec(?:urity)?\.?(?:\s*(?:number|no\.?|#))?))"
                                   r"[\s:#.]*(\d{3}[\- ]?\d{2}[\- ]?\d{4})(?!\d)")
        self._licence_cue = re.compile(r"(?i:\b(?:driver'?s?\s+licen[cs]e|DL|licen[cs]e|passport|lic\.?)(?:\s*(?:number|no\.?|#))?)"
                                       r"[\s:#.]*([A-Z]{0,2}\d[\d\-]{4,15}\d|[A-Z]\d{3,}[A-Z0-9\-]*)(?![\w])")
        self._account_cue = re.compile(r"(?i:\b(?:account|acct|a/c|policy|member|subscriber|group|insurance|medicare|medicaid|"
                                       r"health\s*plan|beneficiary|certificate|serial|vin|device)(?:\s*(?:number|num|no\.?|#|id))?)"
                                       r"[\s:#.]*(\d[\d\-]{4,20}\d|[A-Z]{1,4}\d{5,}[A-Z0-9]*)(?![\w])")
        self._pager_cue = re.compile(r"(?i:\b(?:pager|beeper|pgr|bpr|pg|fax|ext)\.?(?:\s*(?:number|no\.?|#))?)[\s:#.]*(\d[\d\-]{2,12}\d)(?!\d)")
        self._ssn_gate = re.compile(r"\d{3}-\d{2}-\d{4}")
        self._long_digits = re.compile(r"\d{4}[\- ]?\d{4}[\- ]?\d{4}")
        self._iban_gate = re.compile(r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}")
        self._card = re.compile(r"(?<![\d\-])(\d{4}[\- ]?\d{4}[\- ]?\d{4}[\- ]?\d{1,7}|\d{13,19})(?![\d])")
        self._iban = re.compile(r"(?<![A-Z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?![A-Za-z0-9])")
        # a record number standing alone in a header column: line start, a wide gap or a "|" on both sides
        # ("OROZCO,KYLE   560-40-78-5        VISIT DATE", "123456789 | SH | 12345678 | | 1234567 | 01/02/2003")
        self._record_column = re.compile(r"(?m)(?:^|(?<=[ \t]{2})|(?<=\t)|(?<=\|)[ \t]*)[ \t]*"
                                         r"([A-Z]{0,3}\d[\dA-Z]*(?:[\-/][\dA-Z]+){0,4})(?=[ \t]*$|[ \t]{2,}|[ \t]*\|)")
        self._taiwan_id = re.compile(r"(?<![A-Za-z0-9])([A-Z][12]\d{8})(?![A-Za-z0-9])")

    def find(self, text: str, spans: list[Span]) -> None:
        """SSNs, licences, accounts, phones, cards, IBANs, record numbers and Taiwanese IDs, each behind a cheap gate."""
        low = text.lower()
        cues = {name: gate.search(low) is not None for name, gate in _IDENTIFIER_GATE_RES.items()}
        if cues["ssn"] or self._ssn_gate.search(text):
            self._find_ssns(text, spans)
        if cues["licence"]:
            for match in self._licence_cue.finditer(text):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.85))
        if cues["account"]:
            for match in self._account_cue.finditer(text):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.85))
        if "+" in text:
            for match in self._phone_intl.finditer(text):
                digits = sum(ch.isdigit() for ch in match.group(1))
                if 8 <= digits <= 15:
                    spans.append(Span(match.start(1), match.end(1), PHONE, 0.9))
        if cues["phone"]:
            self._find_grouped_phones(text, spans)
        if cues["pager"]:
            for match in self._pager_cue.finditer(text):
                spans.append(Span(match.start(1), match.end(1), PHONE, 0.85))
        if self._long_digits.search(text):
            for match in self._card.finditer(text):
                digits = re.sub(r"\D", "", match.group(1))
                if 13 <= len(digits) <= 19 and digits[0] in "3456" and _luhn(digits):
                    spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.9))
        if self._iban_gate.search(text):
            for match in self._iban.finditer(text):
                if _iban_ok(match.group(1)):
                    spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 1.0))
        for match in (self._record_column.finditer(text) if "\n" in text.strip() or "|" in text or "  " in text.strip()
                      else ()):  # a note's layout, not a lone field value ("20002749" in a DICOM tag)
            value = match.group(1)
            line_start = text.rfind("\n", 0, match.start(1)) + 1
            line_end = text.find("\n", match.end(1))
            alone = not text[line_start:match.start(1)].strip() and not text[match.end(1):len(text) if line_end < 0 else line_end].strip()
            if alone and text[:line_start].count("\n") > 12 and not re.search(r"_{5,}|-{5,}|={5,}", text[max(0, line_start - 200):line_start]):
                continue  # a number on a line of its own: a record number near the top of a note or after a rule line
            digits = sum(ch.isdigit() for ch in value)
            if digits < (7 if value.isdigit() else 6) or digits > 16 or re.fullmatch(r"\d{3}-\d{3}-\d{4}|\d{3}-\d{4}|\d{4}-\d{4}|\d{1,4}[/\-]\d{1,2}[/\-]\d{2,4}"
                                                          r"|\d{2,4}[/\-]\d{1,2}[/\-]\d{1,2}", value):
                continue  # phone numbers, time ranges (0700-1900) and dates have their own rules
            spans.append(Span(match.start(1), match.end(1), MRN, 0.8))
        for match in self._taiwan_id.finditer(text):
            if is_valid_taiwan_id(match.group(1)):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 1.0))

    def _find_grouped_phones(self, text: str, spans: list[Span]) -> None:
        for match in self._phone_groups.finditer(text):
            value = match.group(1)
            digits = sum(ch.isdigit() for ch in value)
            if not 7 <= digits <= 12:
                continue
            before = text[max(0, match.start(1) - 40):match.start(1)]
            if self._phone_context.search(before) or self._phone_after.match(text[match.end(1):match.end(1) + 12]):
                spans.append(Span(match.start(1), match.end(1), PHONE, 0.85))

    def _find_ssns(self, text: str, spans: list[Span]) -> None:
        for match in self._ssn.finditer(text):
            value = match.group()
            if match.group(2) == " " and not re.search(r"(?i)(ssn|social|ss#)\W{0,12}$", text[max(0, match.start() - 24):match.start()]):
                continue
            if _valid_ssn(value):
                spans.append(Span(match.start(), match.end(), ID_NUMBER, 0.95 if match.group(2) == "-" else 0.9))
        for match in self._ssn_cue.finditer(text):
            if _valid_ssn(match.group(1)):
                spans.append(Span(match.start(1), match.end(1), ID_NUMBER, 0.95))
