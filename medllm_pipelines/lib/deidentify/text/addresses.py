"""Street addresses in other countries' layouts and what follows a street: flat, town, region, postcode.

Hauptstraße 5, 12 rue de la Paix, Rua Mina 50, the corner of Main Street and
Elm, P.O. Box 12, SW1A 1AA. The street and the postcode are the ADDRESS;
the town, state and country after them are LOCATION, as i2b2 and
presidio-research label them.
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.lexicon import NEVER, NameLexicon
from medllm_pipelines.lib.deidentify.text.spans import ADDRESS, LOCATION, Span
from medllm_pipelines.lib.deidentify.text.vocabulary import UPPER_ANY, LexiconUser, alternation, place_lists


class AddressRecogniser(LexiconUser):
    """Street lines, units, boxes, postcodes, and the town/region/country pieces after a street."""

    def __init__(self, places: frozenset[str], lexicon: NameLexicon | None = None) -> None:
        super().__init__(lexicon)
        self._place_set = places
        lists = place_lists()
        # international street addresses and the lines that follow them
        street_end = ("straße|strasse|gasse|weg|vej|vägen|gatan|gata|katu|kuja|tie|laan|straat|veien|stræti|braut|"
                      "plein|gracht|dreef|kade|hove|vegur|tún|utca|ulica|rinne|allee|platz|ring|damm|gade|väg")
        street_start = r"(?:(?i:rue|calle|avenida|rua|rúa)|Via|Av\.|Strada|Viale|Piazza|Largo|Travessa|Carrer|ul\.|Ul\.|al\.|Λεωφόρος|Οδός)"
        letter = r"[^\W\d_]"
        self._street_intl = re.compile(
            rf"(?<![\w])((?:\d{{1,6}}\s+){{0,2}}(?:{street_start}\s+(?:{letter}[\w'’.\-]*\s+){{0,4}}\d{{1,5}}[A-Za-z]?"
            rf"|(?:{UPPER_ANY}[\w'’.\-]*\s+){{0,2}}{letter}[\w'’\-]*(?i:{street_end})\.?\s+\d{{1,5}}[A-Za-z]?"
            rf"|{letter}[\w'’\-]*\s+(?:u\.|utca|út|tér|krt\.)\s+\d{{1,5}}\.?"
            rf"|(?:{letter}[\w'’.\-]*\s+){{1,3}}(?i:strasse|straße|gasse|weg|vej|gade|laan|straat|allee|street|road|avenue|lane)\s+\d{{1,5}}"
            rf"|\d{{3,6}}[ \t]+(?:{letter}[\w'’.\-]*[ \t]+){{1,3}}\d{{1,5}}[A-Za-z]?))(?![\w])")
        # number first, then the street type and its name: 12 rue de la Paix, 69 Av Sidi Lakhmi, 33 avenue de Provence
        particle = r"(?:(?i:de|du|des|la|le|les|del|della|do|da|dos|das)\s+|(?i:l|d)['’])"
        self._street_number_first = re.compile(
            rf"(?<![\w])(\d{{1,5}}[A-Za-z]?(?:\s*(?:bis|ter))?,?\s+(?i:rue|avenue|av\.?|boulevard|bd|chemin|impasse|quai|allée|"
            rf"avenida|rua|calle|via)\s+{particle}{{0,2}}{letter}[\w'’\-]*(?:[ \t]+(?:{particle}|(?={UPPER_ANY}))[\w'’\-]*){{0,3}})(?![\w])")
        # a street name and a house number after an address cue: "lives on Rua Mina 50", "sent to Kuusiku 7"
        unit_words = r"%|mg|mcg|kg|g\b|ml|mL|cc|units?|years?|yrs?|yo\b|days?|weeks?|wks?|months?|times|x\b|am\b|pm\b|hours?|hrs?|min"
        self._cued_street = re.compile(
            rf"(?i:\b(?:lives|living|live|resides|residing|located|situated|moved)\s+(?:on|at|to)|\baddress(?:\s+is)?\s*:?"
            rf"|\bsen[dt]\s+(?:it\s+|them\s+)?to|\bmail(?:ed)?\s+(?:it\s+)?to|\bdrops?\s+you\s+off\s+at|\benter\s+on|"
            rf"\bstop\s+at|\breturn\s+(?:it\s+)?to|\bdeliver(?:ed)?\s+to|\bnorth\s+side\s+of|\bsouth\s+side\s+of)"
            rf"[ \t:]+(?:the[ \t]+)?((?:\d{{1,6}}[ \t]+)?(?!(?:Room|Rm|Bed|Unit|Ward|Floor|Bay|Pod|ICU|CCU|ED|OR|PACU|Step|Day|Week|"
            rf"Month|Year|Page)\b){UPPER_ANY}[\w'’.\-]*(?:[ \t]+[\w'’.\-]+){{0,3}}?[ \t]+\d{{1,5}}[A-Za-z]?)"
            rf"(?![\w/:.,]\d|[\w]|\s*(?:{unit_words}))")
        # number first after a cue, no street type: "the restaurant is at 9816 214 Pavlou Drandaki"
        self._cued_number_street = re.compile(
            rf"(?i:\b(?:lives|living|resides|residing|located|situated|moved|is|are|meet\s+(?:me|you|us))\s+(?:on|at|to)|\baddress(?:\s+is)?\s*:?)"
            rf"[ \t:]+((?:\d{{1,6}}[A-Za-z]?[ \t]+){{1,2}}{UPPER_ANY}[a-zà-ÿ][\w'’.\-]*(?:[ \t]+{UPPER_ANY}[\w'’.\-]*){{0,3}})(?![\w])")
        # an intersection: "the corner of Main Street and Elm", "corner of Bygget 64 and Komel Club"
        word = rf"(?:{UPPER_ANY}[\w'’.\-]*|\d{{1,5}}[A-Za-z]?\.?|de|du|des|la|le|del|della|do|da|dos|das|di|van|von|der|ul\.)"
        self._intersection = re.compile(
            rf"(?i:\bcorner\s+of|\bintersection\s+of|\bjunction\s+of)[ \t]+(?:the[ \t]+)?"
            rf"((?:{word}[ \t]+){{0,5}}{word}[ \t]+(?:and|&)[ \t]+(?:{word}[ \t]+){{0,4}}{UPPER_ANY}[\w'’.\-]*)")
        # a flat, suite or apartment standing on its own line or after a street
        self._unit = re.compile(r"(?<![\w])((?:Apt|APT|Apartment|APARTMENT|Suite|SUITE|Ste|STE|Flat|FLAT|(?i:apt\.|suite))\.?"
                                r"[ \t]*(?:No\.?[ \t]*|#[ \t]*)?\d{1,5}[A-Za-z]?)(?![\w])")
        # postcodes whose shape alone tells them: UK (SW1A 1AA), Canada (K1A 0B1)
        self._postcode_shape = re.compile(r"(?<![\w])([A-Z]{1,2}\d[A-Z\d]? \d[ABD-HJLNP-UW-Z]{2}"
                                          r"|[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d)(?![\w])")
        self._lead_number = re.compile(r"(?<![\w.,/:\-])(\d{1,6})[ \t]+$")
        countries = sorted(lists["countries"], key=len, reverse=True)
        self._country_postcode = re.compile(
            rf"(?m)^[^\w\n]*({alternation(countries)})[ \t]+(\d{{4,6}}|\d{{3}} \d{{2}}|\d{{2}}-\d{{3}}|\d{{4}}-\d{{3}})[ \t]*[.,]?$")
        self._zip_cue = re.compile(r"(?i:\b(?:zip|zip code|zipcode|postcode|post code|postal code|PLZ|CEP)(?:\s+(?:is|was))?)[\s:#]*"
                                   r"(\d{3,5}(?:[ \-]\d{2,4})?(?![\d/])|[A-Z]\d[A-Z] ?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})(?![\w])")
        self._street_gate = re.compile(rf"\d{{3,6}}\s+(?:{UPPER_ANY}|[^\W\d_]+\s+\d)|(?i:{street_end}|street|road|avenue|lane|rue|via|calle|rua|"
                                       rf"ul\.|u\.|utca|út|tér|av\.|strada|viale|piazza|largo|carrer|λεωφόρος)\s+\d"
                                       rf"|(?<![\w])(?:(?i:rue|calle|rua|rúa|avenida|ul\.|al\.)|{street_start})\s+[^\W\d_]"
                                       rf"|\d[A-Za-z]?,?\s+(?i:rue|avenue|av\.?|boulevard|bd|chemin|impasse|quai|allée)\s")
        self._po_box = re.compile(r"(?<![\w])((?:\d{1,6}\s+)?(?:(?i:p\.?\s?o\.?\s*box|post\s*(?:office\s+)?box|postbox|postfach|"
                                  r"rural\s+route|r\.r\.|rfd)|PSC|CMR|Unit|Box|BOX|Boîte\s+postale|Apartado)\s+#?\d{1,6}(?:,?\s+Box\s+\d{1,6})?)(?![\w])")
        self._address_tail = re.compile(
            r"(?:(?:[ \t]*,[ \t]*|[ \t]*\n(?:[ \t>]*\n)?[ \t]*(?:>[ \t]*)*(?:,[ \t]*)?|[ \t]+)"
            r"(?:(?:Apt\.?|Suite|Unit|Ste\.?|Box|Flat|Floor|#)\s*[\w\-]+|\d{4,6}(?:-\d{4})?|[A-Z]{2,3}(?![\w])|\([^()\n]{1,20}\)"
            r"|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}(?![\w])"
            r"|[^\W\d_][\w'’.\-]*(?:[ \t]+(?![A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}(?![\w]))[^\W\d_][\w'’.\-]*){0,3}))")
        self._unit_piece = re.compile(r"(?:Apt|Suite|Unit|Ste|Box|Flat|Floor|Fl|Rm|Room|#|P\.?O\.?|St|Rd|Ave|Blvd|Dr|Street|Road|"
                                      r"Avenue)\b", re.IGNORECASE)
        self._trailing_postcode = re.compile(r"[ \t]*(\d{3,6}(?:[ \-]\d{2,4})?|[A-Z]\d[A-Z] ?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2})$")

    def find(self, text: str, spans: list[Span]) -> None:
        """Street lines in other countries' formats, and the city/region/postcode/country after any street."""
        has_upper = any(ch.isupper() for ch in text)
        lexicon = self.lexicon
        anchors = [(s.start, s.end) for s in spans if s.label == ADDRESS]
        low = text.lower()
        patterns = [self._po_box] if ("box" in low or "PSC" in text or "Unit" in text or "CMR" in text or "rural" in low
                                      or "r.r." in low or "rfd" in low or "postfach" in low or "apartado" in low) else []
        if self._street_gate.search(text):
            patterns += [self._street_intl, self._street_number_first]
        if has_upper:
            patterns += [self._cued_street, self._cued_number_street]
        if "corner" in low or "intersection" in low or "junction" in low:
            patterns.append(self._intersection)
        for pattern in patterns:
            for match in pattern.finditer(text):
                words = re.findall(r"[^\W\d_]+", match.group(1))
                if pattern in (self._street_intl, self._cued_street, self._cued_number_street) and words and all(lexicon.kind(w) == NEVER for w in words
                                                                   if len(w) > 2) and not re.search(r"(?i)(rue|via|calle|rua|ul\.|u\.)", match.group(1)):
                    continue
                if pattern is self._intersection:  # each street its own span; "and" stays readable
                    join = re.search(r"[ \t]+(?:and|&)[ \t]+", match.group(1))
                    anchors.append((match.start(1), match.start(1) + join.start()))
                    anchors.append((match.start(1) + join.end(), match.end(1)))
                    continue
                anchors.append((match.start(1), match.end(1)))
        for match in self._unit.finditer(text):
            spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.8))
        for match in self._postcode_shape.finditer(text):
            spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.8))
        for match in self._country_postcode.finditer(text):
            spans.append(Span(match.start(1), match.end(1), LOCATION, 0.85))
            spans.append(Span(match.start(2), match.end(2), ADDRESS, 0.85))
        for start, end in anchors:
            cursor = end
            pieces: list[tuple[int, int]] = []
            while True:
                tail = self._address_tail.match(text, cursor)
                if not tail:
                    break
                piece = tail.group().strip(" \t\n,>")
                words = re.findall(r"[^\W\d_]+", piece)
                if words and piece[:1].isalpha() and not piece[:1].isupper():
                    break
                if words and not re.match(r"(?:Apt|Suite|Unit|Ste|Box|Flat|Floor)", piece) and not piece.isupper() and any(
                        lexicon.kind(w) == NEVER and w not in ("Street", "Road") for w in words if len(w) > 2) and not piece in self._place_set:
                    break
                if piece in ("I", "Im") or piece.startswith(("I ", "I'")):
                    break
                cursor = tail.end()
                piece_start = tail.start() + len(tail.group()) - len(tail.group().lstrip(" \t\n,>"))
                pieces.append((piece_start, piece_start + len(piece)))
            self._address_pieces(text, start, end, pieces, spans)
        for match in self._zip_cue.finditer(text):
            spans.append(Span(match.start(1), match.end(1), ADDRESS, 0.85))
        # a second number before a street line is part of it (a building or box number: "17151 2450 Crown St")
        for k, span in enumerate(spans):
            if span.label == ADDRESS and span.start > 0 and text[span.start:span.start + 1].isalnum():
                lead = self._lead_number.search(text, max(0, span.start - 10), span.start)
                if lead:
                    spans[k] = span._replace(start=lead.start(1))

    def _address_pieces(self, text: str, start: int, end: int, pieces: list[tuple[int, int]], spans: list[Span]) -> None:
        """A street line and what follows it: flat, box and postcode stay ADDRESS; town, state and country are LOCATION.

        i2b2 and presidio-research both label the city, state and country of an
        address as places (CITY/STATE/COUNTRY, GPE), the street and postcode as
        the address.
        """
        address_end = end
        score = 0.85 if pieces else 0.8
        for piece_start, piece_end in pieces:
            piece = text[piece_start:piece_end]
            if re.fullmatch(r"(?i:st|rd|ave|blvd|dr|street|road|avenue)\.?", piece) and text[address_end - 1:address_end].isdigit():
                break  # "Hauptstraße 5" ends with its house number: a street type after it is not the street's
            if (self._unit_piece.match(piece) or not re.search(r"[^\W\d_]", piece)
                    or re.match(r"(?:APO|FPO|DPO|AA|AE|AP)\b", piece)):  # military post: APO AE 09012
                if piece_start <= address_end + 3 and "\n" not in text[address_end:piece_start]:
                    address_end = piece_end
                else:
                    spans.append(Span(piece_start, piece_end, ADDRESS, score))
                continue
            code = self._trailing_postcode.search(piece)
            place_end = piece_start + (code.start() if code else len(piece))
            if place_end > piece_start:
                spans.append(Span(piece_start, place_end, LOCATION, 0.85))
            if code:
                spans.append(Span(piece_start + code.start(1), piece_end, ADDRESS, score))
        spans.append(Span(start, address_end, ADDRESS, score))
