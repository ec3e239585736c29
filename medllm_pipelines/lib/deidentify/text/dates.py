"""Dates in every common written form, English and Chinese, each with a plausible calendar value.

3/14, 03/14/19, 'yy, Jan 5, Tuesday, in 1998, 去年十月, 本月20号: a shape alone
is not enough where it is also a score, a dose or a ratio (4/5 strength,
1/2 tablet), so the short forms need a date word before them.
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.spans import DATE, Span

_MONTH_FULL = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_MONTH_ANY = rf"(?:{_MONTH}|{_MONTH.upper()}|(?i:january|february|march|april|june|july|august|september|october|november|december))"
_WEEKDAY = r"(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs?)?|Fri|Sat(?:ur)?|Sun)(?:day)?s?"
_TIME = r"(?:,?\s*(?:at\s+|@\s*)?\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AaPp]\.?[Mm]\.?)?|\s+\d{1,2}\s*[AaPp]\.?[Mm]\.?)"
_YEAR = r"(?:1[89]\d{2}|20\d{2})"
_ZH_NUM = "一二三四五六七八九十〇零两"
_DATE_WORD_GATE = re.compile("Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
                             "|day|DAY|jan|feb|mar|apr|jun|jul|aug|sep|oct|nov|dec")


class DateRecogniser:
    """Numeric, worded, weekday and year dates; Chinese absolute and relative dates."""

    def __init__(self) -> None:
        self._numeric_date = re.compile(r"(?<![\d/.\-])(?<!\d:)(\d{1,2})([/\-.])(\d{1,2})\2(\d{4}|\d{2})(?![\d/\-]|\.\d)")
        self._month_day = re.compile(r"(?<![\d/.\-,])(?<!\d:)(\d{1,2})/(\d{1,2})(?![\d/]|\.\d|-\d)")
        self._month_year = re.compile(r"(?<![\d/.\-,])(?<!\d:)(0?[1-9]|1[0-2])/(3[2-9]|[4-9]\d|0\d|(?:19|20)\d{2})(?![\d/]|\.\d)")
        self._month_words = re.compile(
            rf"(?<![A-Za-z])(?:(?:{_WEEKDAY}),?\s+)?"
            rf"(?:(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_ANY}\.?(?:,?\s+(?:of\s+)?{_YEAR}|\s*'\d{{2}})?"
            rf"|{_MONTH_ANY}\.?(?:\s+(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)?(?![\d:]))?(?:,?\s+(?:of\s+)?{_YEAR}|\s*'\d{{2}}|-\d{{2}}(?!\d))?)"
            rf"(?:{_TIME})?(?![A-Za-z])")
        self._weekday = re.compile(rf"(?<![A-Za-z])(?:{_WEEKDAY}|(?:MON|TUES?|WED(?:NES)?|THU(?:RS)?|FRI|SAT(?:UR)?|SUN)DAY"
                                   rf"|(?:mon|tues|wednes|thurs|fri|satur|sun)day)"
                                   rf"(?:\s+(?:morning|afternoon|evening|night))?(?![A-Za-z])")
        self._short_year = re.compile(r"(?<![\w'’])['’](\d{2})(?![\d\w])")
        self._year = re.compile(rf"(?<![\d/.\-$#])({_YEAR})(?:'?s)?(?![\d/]|\.\d|\s*(?:mg|mcg|ml|mL|cc|units?|g\b|kg|%|cells|/))")
        self._year_cue = re.compile(r"(?i:\b(?:in|since|of|from|until|till|to|by|during|circa|around|before|after|early|"
                                    r"late|mid|summer|winter|spring|fall|autumn|born|founded|established|year|class|"
                                    r"the|dated|through|thru|between|and|-|–))[\s\-]*$")
        self._time_tail = re.compile(_TIME)
        self._zh_dates = re.compile(
            rf"(?:(?:去年|今年|明年|前年|\d{{2,4}}年|[{_ZH_NUM}]{{2,4}}年)?(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})月(?!经|份?[以之]?内)"
            rf"(?:(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})[日号]|份|初|中旬|上旬|下旬|底|末)?"
            rf"|(?:上个?|这个?|本|下个?)月(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})[日号]"
            rf"|(?:上|本|这|下)(?:周|星期|礼拜)[一二三四五六日天末]"
            rf"|(?:去年|前年|今年|明年)(?:春天|夏天|秋天|冬天|年初|年底|年末|春节|国庆|元旦)?"
            rf"|大前天|前天|(?:\d{{1,2}}|[{_ZH_NUM}]{{1,3}})[日号](?=[上下]午|晚上|早上|凌晨|入院|出院|就诊|来院))")

    def find(self, text: str, spans: list[Span], has_upper: bool) -> None:
        """Numeric dates and years (text with a digit), then worded dates where a capital letter allows."""
        for match in self._numeric_date.finditer(text):
            a, b, year = int(match.group(1)), int(match.group(3)), match.group(4)
            if not ((1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)):
                continue
            if match.group(2) == "." and len(year) == 2 and not self._date_context(text, match.start()):
                continue  # 1.2.3-like version numbers
            spans.append(Span(match.start(), self._with_time(text, match.end()), DATE, 0.9))
        for match in self._month_day.finditer(text):
            month, day = int(match.group(1)), int(match.group(2))
            if not (1 <= month <= 12 and 1 <= day <= 31):
                continue
            before = text[max(0, match.start() - 30):match.start()].lower()
            if re.search(r"(pain|strength|score|scale|motor|power|rated|grade|reflex|gcs|apgar|murmur|sbp|bp|"
                         r"blood pressure|ratio|out of|x|tab|tabs|dose|of)\s*[:=]?\s*$|\d\s*$", before):
                continue
            if day in (5, 10) and not self._date_context(text, match.start()):
                continue  # 4/5 strength, 3/10 pain
            if month <= 4 and day <= 8 and not self._date_context(text, match.start()):
                continue  # 1/2 tablet, 3/4 of
            spans.append(Span(match.start(), self._with_time(text, match.end()), DATE, 0.8))
        for match in self._month_year.finditer(text):
            before = text[max(0, match.start() - 30):match.start()].lower()
            if match.group(2).startswith("0") and len(match.group(2)) == 2 and not self._date_context(text, match.start()):
                continue
            if not re.search(r"(ratio|x|of|\d)\s*[:=]?\s*$", before):
                spans.append(Span(match.start(), match.end(), DATE, 0.75))
        for match in self._short_year.finditer(text):
            spans.append(Span(match.start(), match.end(), DATE, 0.8))
        for match in self._year.finditer(text):
            if re.match(r"[\-/.]\d{1,2}[\-/.]\d", text[match.end():match.end() + 6]):
                continue  # the year of a full (or impossible) numeric date, handled above
            before = text[max(0, match.start() - 16):match.start()]
            after = text[match.end():match.end() + 2]
            year_range = re.match(r"[\-–](?:(?:19|20)\d{2}|\d{2})(?![\d\-])", text[match.end():match.end() + 6])
            if self._year_cue.search(before) or match.group().endswith("s") or year_range or (
                    re.search(r"\b(?:a|an)\s+$", before) and re.match(r" [A-Z]", after)):
                spans.append(Span(match.start(), match.end(), DATE, 0.8))
        if has_upper:
            self.find_word_dates(text, spans)

    def find_word_dates(self, text: str, spans: list[Span]) -> None:
        """Worded dates and weekdays (Jan 5, Tuesday): all that a text without digits can hold."""
        if not _DATE_WORD_GATE.search(text):
            return
        for match in self._month_words.finditer(text):
            value = match.group()
            bare = value.strip(" .,")
            if not any(ch.isdigit() for ch in value):
                if bare in ("May", "MAY", "March", "MARCH", "Mar", "Jan", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct",
                            "Nov", "Dec", "Feb", "Apr") and not self._date_context(text, match.start()):
                    continue  # "may" the verb, "Mar" the abbreviation, "march"
                if bare.islower() or (bare.isupper() and bare not in [m.upper() for m in _MONTH_FULL]):
                    continue
            end = match.end()
            if value.endswith(".") and value[:-1].split()[-1] in _MONTH_FULL:
                end -= 1  # the full stop of the sentence, not of an abbreviation
            spans.append(Span(match.start(), end, DATE, 0.85))
        for match in self._weekday.finditer(text):
            word = match.group()
            if word[:3].lower() in ("sat", "sun", "wed", "mon", "fri") and len(word.split()[0]) <= 4:
                continue  # abbreviations alone: "sat up", "Sun exposure"
            spans.append(Span(match.start(), match.end(), DATE, 0.8))

    def _date_context(self, text: str, at: int) -> bool:
        before = text[max(0, at - 24):at].lower()
        return bool(re.search(r"\b(on|since|from|until|till|to|by|dated?|admitted|admission|discharged?|seen|"
                              r"visit|of|through|thru|in|early|late|mid|last|next|this|starting|started|born|dob|d\.o\.b\.|"
                              r"surgery|procedure|s/p|returned?|follow[- ]?up|f/u|appointment|appt|scheduled|due|"
                              r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|dd|dt|dv)[\s:,]*$", before))

    def _with_time(self, text: str, end: int) -> int:
        tail = self._time_tail.match(text, end)
        return tail.end() if tail else end

    def find_zh(self, text: str, spans: list[Span]) -> None:
        """Chinese dates, absolute and relative (本月20号, 去年十月)."""
        if "月" not in text and "周" not in text and "星期" not in text and "礼拜" not in text and "年" not in text \
                and "天" not in text and "日" not in text and "号" not in text:
            return
        for match in self._zh_dates.finditer(text):
            value = match.group()
            if value in ("今年", "明年") or len(value) < 2:
                continue
            start = match.start()
            if value[0].isdigit() and start > 0 and text[start - 1].isdigit():
                continue
            spans.append(Span(start, match.end(), DATE, 0.8))
