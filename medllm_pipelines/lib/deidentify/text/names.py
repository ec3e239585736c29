"""Names in running text: with no template around them, told by a cue, a list, a verb or the sentence.

"seen by smith", "wife Mary", "Smith, John", "JS/mk", "Graves said", a dialogue
speaker, a vocative, a greeting's addressee, a list of given names. Each rule
asks for evidence beyond a capital letter: a name list *and* not a clinical
or everyday word (``lexicon``), or a cue. A street named after a person
(Martinez Mall, 12 Isaac Lodge) is told apart here and given as an ADDRESS.
"""

from __future__ import annotations

import re

from medllm_pipelines.lib.deidentify.text.lexicon import AMBIGUOUS, LISTED, NEVER, UNKNOWN, NameLexicon
from medllm_pipelines.lib.deidentify.text.spans import ADDRESS, NAME, Span
from medllm_pipelines.lib.deidentify.text.vocabulary import LexiconUser, alternation

# street suffixes that after a name are more often something else (Smith Center, Jones Station)
_NOT_STREET_SUFFIXES = frozenset("""Close Rise Wynd Parade Esplanade Quay Wharf Yard Gate Hollow
Center Centers Club Station Mission Well Wells Rest Course Light Lights Common Commons
Run Walk Key Keys Spring Fall Falls Land Branch Bottom Point Estate Estates Camp Green Greens Field Fields Union Unions Mount
Forest Garden Gardens Village Villages Haven Manor Manors View Views Crossing Landing Lodge""".split())
# listed as names somewhere (He is a Chinese surname) but never one before "said" or in a list of names
_FUNCTION_WORDS = frozenset("""he she they it we you who this that there here then which what one someone everyone nobody
anyone all both each either neither none nothing something anything everything his her their our your its mom dad
will may can could would should might must shall did does do had has have was were are is also only just still now so
well yet but and or nor not no yes him me us them hers
gave gives states stated says said told asks asked went came took got""".split())  # verbs after a cue: "nurse gave"


class NameRecogniser(LexiconUser):
    """English (and other Latin-script) names in prose, by cue, list, verb and sentence position."""

    def __init__(self, raw: dict, lexicon: NameLexicon | None = None) -> None:
        super().__init__(lexicon)
        titles = alternation(raw["en_titles"])
        cues = list(raw["en_cues_before"]) + list(raw.get("en_relative_cues", []))
        title = rf"(?:(?:{titles})\.?|(?i:mr|mrs|ms|dr|prof)\.)\s+"
        cue = rf"(?:{alternation({c.lower() for c in cues})})[:\s,?]+"
        self._title_scan = re.compile(rf"(?<![A-Za-z]){title}")
        self._cue_scan = re.compile(rf"(?<![a-z]){cue}")  # on the lower-cased text
        self._given = frozenset(w.lower() for w in str(raw.get("en_given_names", "")).split())
        # (no "^": Pattern.match(text, pos) anchors at pos, "^" would only match at the text's start)
        self._after_cue = re.compile(r"(?:,?[ \t]*(?:M\.D\.|MD|RN|D\.O\.|NP|PA-C|PhD|FACP|MBBS)(?![\w])|\s+\((?:MRN|DOB|PCP|"
                                     r"attending|resident)\b|,\s+(?:MD|RN|NP|PA|DO)\b"
                                     r"|\s+is\s+an?\s+\d{1,3}[\s\-]*(?:yo\b|y/o|y\.o\.|years?\b|-year|yr\b|month))")
        self._token = re.compile(r"[^\W\d_\u3400-\u9fff]+(?:['’\-][^\W\d_\u3400-\u9fff]+)*")
        self._lower_cue_scan = re.compile(
            rf"(?<![a-z])(?:(?:seen|signed|dictated|reviewed|examined|evaluated|cosigned|transcribed|"
            rf"discussed with|spoke with|spoke to|d/w)\s+(?:by\s+)?(?:dr\.?\s+)?|"
            rf"(?:{alternation({c.lower() for c in raw.get('en_relative_cues', [])})})[:\s,]+|"
            rf"(?:{alternation({t.lower() for t in raw['en_titles']})})\.?\s+)")  # on the lower-cased text
        self._signature = re.compile(r"(?m)(?:^|(?<=\s))([A-Z]{2,4})(?:\s?/\s?([a-z]{2,12}|[A-Z]{2,4})|:([a-z]{2,12}))"
                                     r"(?:/[a-z]{2,12}){0,3}(?=\s|$|[,.;])")  # JS/mk, XGT:holmes; not "CV: NSR"
        self._place_or_org_after = re.compile(r"\s+(?:Hospital|Clinic|Center|Centre|Medical|Health|Inc|LLC|Ltd|Corp|"
                                              r"University|College|School|Street|St\b|Road|Rd\b|Avenue|Ave\b|County|City|"
                                              r"Park|Lake|Beach|Valley|Heights|Springs)")
        suffixes = [w for w in str(raw.get("en_street_suffixes", "")).split() if (len(w) >= 4 or w in ("Ave", "Rd", "Blvd", "Ln", "Way"))
                    and w not in _NOT_STREET_SUFFIXES]
        self._street_after = re.compile(rf"[ \t]+(?:{alternation(suffixes)})(?![\w\-])\.?") if suffixes else re.compile(r"(?!)")
        self._lower_middle = re.compile(r" [a-z]\.? (?=[a-z])")
        # a name told by what follows it: a verb of speech or living ("Graves said", "Kowalski lives in")
        self._name_verb = re.compile(r"(?:['’]s)?\s+(?:says|said|states|stated|reports|reported|denies|denied|shouted|asked|told|"
                                     r"explained|lives|lived|began|agrees|agreed|wants|wanted|feels|felt|spent|complains|"
                                     r"had given|has given|is very|was seen|was called|called back)\b")
        # a name before a possessive relative ("Smith's wife", "roberto's daughter")
        relatives = alternation(w for w in raw.get("en_relative_cues", []) if w.isalpha() and w.islower() and len(w) > 2
                                 and w not in ("named", "per", "called", "friend", "partner"))
        self._possessive = re.compile(rf"(?<![\w'’])([^\W\d_][^\W\d_\-]+)['’]s\s+(?:{relatives})\b")
        # a doctor's dictation code after the degree ("FILBERT BRIGHT, M.D.    FB59")
        self._dictation_code = re.compile(r"(?:M\.D\.|\bMD|D\.O\.|\bRN|\bNP|PA-C)[ \t]+([A-Z]{2,3}\d{1,3})(?![\w])")
        # a list of names ("Smith, Jones and Brown"): joined by a comma or "and"
        self._list_gap = re.compile(r",\s?|,?\s+(?:and|&)\s+")
        # kinds of name told by the sentence around it (2.4.0)
        word = r"[^\W\d_][^\W\d_'’\-]*"
        # a dialogue line's speech: a quotation or a first/second person pronoun ("Amy: Remember me?")
        self._speech = re.compile(r"""[ \t]*(?:["“]|.*(?:\b(?:I|I'm|me|my|you|your|we)\b|[?!]))""")
        # a vocative: "Remember me, Mary?", "Don't go to town, Mark!"; "Mary, can I speak to you"
        self._vocative_after = re.compile(r"[ \t]*[?!]")
        self._vocative_start = re.compile(r",[ \t]+(?:(?:can|could|would|will|may|shall)[ \t]+(?:I|you|we)\b|please\b|"
                                          r"(?:do|did|are|have|were)[ \t]+you\b)")
        # greetings and sign-offs: "Hi Sarah,", "Thanks, John.", "Regards,\nX Y"
        self._greeting = re.compile(r"(?:(?<![^\W\d_])(?:Hi|Hello|Hey|Dear|Thanks|Thank you|Cheers|Regards|Best|Sincerely|"
                                    r"Best wishes|Kind regards|Warm regards|Yours|Yours truly|Love|Bye|Goodbye|Morning|"
                                    r"Good morning|Good afternoon|Good evening)),?[ \t]*\n?[ \t]*(?=[A-Z])")
        # a told name in lower case: "my name is borna", "name:    hyuuma t. maida", "call me višeslav", "named him Luís"
        self._told_name = re.compile(rf"(?i:(?<![^\W\d_])(?:my name is|name\s*:|names? (?:is|was)|call(?:s|ed)? me|"
                                     rf"(?:named|called|call|calls) (?:him|her|them))[ \t]+)"
                                     rf"({word}(?:[ \t]+[^\W\d_](?![^\W\d_])\.?)?(?:[ \t]+{word}){{0,2}})")
        # a creator before a work: "the Dratchev novel", "the codey m ross version"
        self._work = re.compile(rf"(?<![^\W\d_])[Tt]he[ \t]+({word}\.?(?:[ \t]+{word}\.?){{0,3}})[ \t]+(?:novel|novels|version|book|"
                                rf"books|film|films|movie|poem|song|songs|album|biography|memoir|recording|painting|"
                                rf"adaptation|remix|trilogy)(?![^\W\d_])")  # not "series", "story": the cxr series
        # a person's verb, strong enough to tell a name at a sentence's start ("Jacob lives on", "selma is from")
        self._person_verb = re.compile(r"[ \t]+(?:lives|lived|grew up|was born|began writing|began|spent|had given|has given|"
                                       r"is from|was from|comes from|came from)\b")
        self._line_start_word = re.compile(r"(?m)(?:^|(?<=[.!?][ \t])|(?<=[.!?][ \t]{2}))[ \t\"“]*([^\W\d_][^\W\d_'’\-]+)")
        # the other person of a telling: "said Carla to Sandra", "had given Angel his address"
        self._told_to = re.compile(r"(?:said|says|whispered|replied|shouted|wrote|explained)[ \t]+[A-Z][^\W\d_]+[ \t]+to[ \t]+$"
                                   r"|(?<![^\W\d_])(?:given|gave|told|showed|sent|handed|asked)[ \t]+$")
        self._possessive_after = re.compile(r"[ \t]+(?:his|her|their)\b")
        # a list of lower-case given names ("silvana, adam, christopher, kristina, chad and caleb")
        # (three commas at least: "owens, duran and oneal" is a firm's name as often as three people)
        self._lower_list = re.compile(r"(?<![^\W\d_,] )(?<![^\W\d_])([a-zà-ÿ][^\W\d_]+(?:,[ \t]*[a-zà-ÿ][^\W\d_]+){2,}"
                                      r"(?:,?[ \t]+(?:and|&)[ \t]+[a-zà-ÿ][^\W\d_]+)?)(?![^\W\d_])")
        self._username = re.compile(r"(?i:user(?:name)?|login|userid|user id)\s*[:=]\s*([A-Za-z][\w.\-]{2,30})")

    def find(self, text: str, spans: list[Span]) -> None:
        """Names (and streets named after a person) in ``text``, appended to ``spans``."""
        lexicon = self.lexicon
        self._find_told_names(text, spans)  # also in text with no candidate token
        # one scan for every cue; a token is cued when one ends right before it
        low = text.lower()
        if len(low) != len(text):  # a character whose lower case is longer (İ): scan the text as is
            low = "".join(ch.lower()[:1] for ch in text)
        cue_ends = {m.end() for m in self._cue_scan.finditer(low)} | {m.end() for m in self._title_scan.finditer(text)}
        lower_ends = {m.end() for m in self._lower_cue_scan.finditer(low)} if cue_ends else set()
        # candidates only: capitalised words, words right after a cue, common given names in lower case
        # (single letters are initials inside a name, Mary A. Smith, not tokens of their own)
        given = self._given
        tokens = [t for t in self._token.finditer(text) if t.end() - t.start() > 1 and (
            t.group()[0].isupper() or t.start() in lower_ends or t.group() in given
            or (t.end() - t.start() >= 3 and lexicon.is_first(t.group())))]
        if not tokens:
            return
        n = len(tokens)
        words = [t.group().rstrip("'’").removesuffix("'s").removesuffix("’s") for t in tokens]
        kinds = [lexicon.kind(w) if len(w) > 1 and not w.startswith(("I'", "I’")) and not (
            w[0].islower() and w in _FUNCTION_WORDS) else NEVER for w in words]
        caps = [w[:1].isupper() for w in words]
        upper = [w.isupper() and len(w) > 1 for w in words]
        mostly_upper = sum(upper) > 0.6 * n
        skip = [self._in_code(text, t.start(), t.end()) for t in tokens]
        cued = [t.start() in cue_ends for t in tokens]
        lower_ok = [t.start() in lower_ends for t in tokens]
        name = [False] * n
        for i in range(n):
            if skip[i] or kinds[i] == NEVER:
                continue
            if cued[i] and (caps[i] or (lower_ok[i] and kinds[i] in (LISTED, AMBIGUOUS))):
                name[i] = True
            elif kinds[i] == LISTED and caps[i] and (not upper[i] or not mostly_upper or self._neighbour_listed(i, kinds, upper, tokens, text)):
                name[i] = True
            elif (caps[i] and kinds[i] in (AMBIGUOUS, UNKNOWN, LISTED) and self._after_cue.match(text, tokens[i].end())
                  and (kinds[i] != AMBIGUOUS or self._name_like(words[i]))):
                name[i] = True
            elif (caps[i] and not upper[i] and self._name_verb.match(text, tokens[i].end()) and (
                    kinds[i] != AMBIGUOUS or (self._name_like(words[i]) and not self._sentence_start(text, tokens[i].start())))):
                name[i] = True  # "Graves said", "Kowalski lives alone"
        # a run of two or three capitalised words none of which is an English or clinical word
        # (Krisztián Szöllösy, Stefanía K. Oddgeirsdóttir): a name unless a place/organisation word follows
        for i in range(n - 1):
            if name[i] or skip[i] or not caps[i] or upper[i] or kinds[i] not in (LISTED, UNKNOWN):
                continue
            j = i + 1
            if not (caps[j] and not upper[j] and not skip[j] and kinds[j] in (LISTED, UNKNOWN)
                    and self._joined(text, tokens[i], tokens[j]) and "," not in text[tokens[i].end():tokens[j].start()]):
                continue
            tail = text[tokens[j].end():tokens[j].end() + 30]
            if re.match(r"\s+(?:Hospital|Clinic|Center|Centre|Inc|LLC|Ltd|Corp|University|Street|St\b|Road|Avenue)", tail):
                continue
            name[i] = name[j] = True
        # a speaker's name at the start of a dialogue line ("Halldór: What a wife")
        for i in range(n):
            t = tokens[i]
            if (not name[i] and caps[i] and not upper[i] and kinds[i] in (LISTED, UNKNOWN)
                    and (t.start() == 0 or text[t.start() - 1] == "\n") and text[t.end():t.end() + 1] == ":"):
                name[i] = True
        self._mark_told_names(text, tokens, words, kinds, caps, upper, skip, name)
        # lower-case names: a common given name then a surname-like word (follow up with patricia desrosiers)
        for i in range(n):
            if not name[i] and not caps[i] and kinds[i] == LISTED and (words[i] in given or lexicon.is_first(words[i])):
                middle = self._lower_middle.match(text, tokens[i].end())
                following = self._token.match(text, middle.end() if middle else tokens[i].end() + 1)
                if (following and text[tokens[i].end()] == " " and following.group()[:1].islower()
                        and len(following.group()) > 2 and lexicon.kind(following.group()) in (LISTED, UNKNOWN)
                        and (len(words[i]) >= 4 or words[i] in given or lexicon.kind(following.group()) == LISTED)):
                    name[i] = True
                    spans.append(Span(tokens[i].start(), following.end(), NAME, 0.7))
        # grow: a capitalised non-word beside a name ("Teresa Kreutzmann", "Smith, John", "Mary A. Brown")
        for _ in range(3):
            changed = False
            for i in range(n):
                if name[i] or skip[i] or kinds[i] == NEVER or not caps[i]:
                    continue
                for j in (i - 1, i + 1):
                    if 0 <= j < n and name[j] and self._joined(text, tokens[min(i, j)], tokens[max(i, j)]):
                        if kinds[i] != AMBIGUOUS or lexicon.is_first(words[min(i, j)]) or cued[min(i, j)]:
                            name[i] = changed = True
                            break
            if not changed:
                break
        listed_apart = self._mark_name_lists(text, tokens, words, kinds, caps, upper, skip, name)
        # an ambiguous first name right before a capitalised surname (Mary Smith, Will Turner)
        for i in range(n - 1):
            if (not name[i] and kinds[i] == AMBIGUOUS and caps[i] and not upper[i] and self._name_like(words[i])
                    and lexicon.is_first(words[i]) and self._joined(text, tokens[i], tokens[i + 1])
                    and "," not in text[tokens[i].end():tokens[i + 1].start()]):
                if name[i + 1]:
                    name[i] = True
                elif (caps[i + 1] and not upper[i + 1] and not skip[i + 1] and kinds[i + 1] in (LISTED, UNKNOWN)
                      and not self._place_or_org_after.match(text, tokens[i + 1].end())):
                    name[i] = name[i + 1] = True  # Albert Svenningsen, Katrina Mota
        i = 0
        while i < n:
            if not name[i]:
                i += 1
                continue
            j = i
            while j + 1 < n and name[j + 1] and self._joined(text, tokens[j], tokens[j + 1]) and not (
                    j in listed_apart and j + 1 in listed_apart and "," in text[tokens[j].end():tokens[j + 1].start()]):
                j += 1
            start, end = tokens[i].start(), tokens[j].start() + len(words[j])
            score = 0.9 if any(cued[k] for k in range(i, j + 1)) else 0.8
            street = self._street_after.match(text, end) if score < 0.9 else None
            street_end = street.end() if street is not None else None
            if street is not None and street.group().endswith(".") and len(street.group().strip()) > 4:
                street_end -= 1  # "Bridge Road." ends a sentence; "Ave." is an abbreviation
            number = re.search(r"(?<![\w.,/\-])\d{1,6}[ \t]+$", text[max(0, start - 8):start])
            if street is None and score < 0.9 and j > i and self._street_after.fullmatch(" " + words[j]):
                # the suffix was taken as part of the name (Mall, Parks are surnames too): a street only with
                # a house number before it or a street abbreviation after it (12 Isaac Parks, Martinez Mall St.)
                abbreviation = re.match(r"[ \t]+(?:St|Rd|Ave|Blvd)\b\.?", text[end:end + 8])
                if number or abbreviation:
                    street_end = end + (abbreviation.end() if abbreviation else 0)
            if street_end is not None:  # a street named after a person: Martinez Mall, Eriksson Bridge, 12 Isaac Lodge
                spans.append(Span(start - (len(number.group()) if number else 0), street_end, ADDRESS, 0.85))
                i = j + 1
                continue
            spans.append(Span(start, end, NAME, score))
            i = j + 1
        for match in self._signature.finditer(text):
            second = match.group(2) or match.group(3)
            if match.group(1).lower() in lexicon.forced or self.lexicon.kind(second) == NEVER and len(second) > 4:
                continue
            spans.append(Span(match.start(1), match.end(), NAME, 0.8))
        for match in self._username.finditer(text):
            spans.append(Span(match.start(1), match.end(1), NAME, 0.85))
        if "'" in text or "’" in text:
            for match in self._possessive.finditer(text):
                if len(match.group(1)) > 2 and lexicon.kind(match.group(1)) != NEVER:
                    spans.append(Span(match.start(1), match.end(1), NAME, 0.8))
        for match in self._dictation_code.finditer(text):
            spans.append(Span(match.start(1), match.end(1), NAME, 0.8))

    def _speaker_ok(self, word: str, kind: int) -> bool:
        """A word that can be a speaker or a vocative: not clinical or everyday, or a listed first name."""
        return kind in (LISTED, UNKNOWN) or (kind == AMBIGUOUS and self._name_like(word) and self.lexicon.is_first(word))

    def _mark_told_names(self, text: str, tokens: list[re.Match[str]], words: list[str], kinds: list[int],
                         caps: list[bool], upper: list[bool], skip: list[bool], name: list[bool]) -> None:
        """Names told by their place in a sentence: a dialogue speaker, a vocative, a greeting's addressee."""
        greeted = {m.end() for m in self._greeting.finditer(text)} if caps else set()
        # speaker lines whose word can be a name: a word that is also English or clinical (Destiny, Comfort)
        # speaks only in a dialogue, two such lines at least, not under one "Comfort:" header of a nursing note
        speakers = sum(1 for i, t in enumerate(tokens) if kinds[i] != NEVER and self._speaker_ok(words[i], kinds[i])
                       and (t.start() == 0 or text[t.start() - 1] == "\n") and text[t.end():t.end() + 1] == ":")
        for i, t in enumerate(tokens):
            if name[i] or skip[i] or upper[i] or kinds[i] == NEVER or not self._speaker_ok(words[i], kinds[i]):
                continue
            start, end = t.start(), t.end()
            line_start = start == 0 or text[start - 1] == "\n"
            if line_start and text[end:end + 1] == ":" and (caps[i] or kinds[i] != UNKNOWN) and (
                    kinds[i] != AMBIGUOUS or speakers >= 2):
                # a dialogue speaker ("Destiny: Remember me", 'tracy:"i'm ...'); a section header has no speech
                line_end = text.find("\n", end)
                if self._speech.match(text[end + 1:line_end if line_end >= 0 else len(text)]):
                    name[i] = True
                continue
            if not caps[i]:
                continue
            if start in greeted:
                name[i] = True  # "Hi Sarah,", "Regards,\nJohn"
            elif text[max(0, start - 2):start] in (", ", ",\t") and self._vocative_after.match(text, end):
                name[i] = True  # "Remember me, Mary?"
            elif self._sentence_start(text, start) and self._vocative_start.match(text, end):
                name[i] = True  # "Warrane, can I please speak to your boss"
            elif kinds[i] != UNKNOWN and self._told_to.search(text, max(0, start - 40), start) and (
                    text[start - 4:start].strip() == "to" or self._possessive_after.match(text, end)):
                name[i] = True  # "said Carla to Sandra", "had given Angel his address"

    def _find_told_names(self, text: str, spans: list[Span]) -> None:
        """Names in lower case or unlisted, told by a phrase: "my name is", "named him", "the X novel", a list of names."""
        lexicon = self.lexicon
        low = text.lower()
        if "name" in low or "call" in low:
            for match in self._told_name.finditer(text):
                end = match.start(1)
                for piece in re.finditer(r"[^\W\d_][^\W\d_'’\-]*\.?", match.group(1)):
                    bare = piece.group().rstrip(".")
                    if len(bare) > 1 and (lexicon.kind(bare) == NEVER or bare.lower() in _FUNCTION_WORDS):
                        break
                    end = match.start(1) + piece.end() - (1 if piece.group().endswith(".") and len(bare) > 1 else 0)
                if end > match.start(1) and len(text[match.start(1):end].strip()) > 1:
                    spans.append(Span(match.start(1), end, NAME, 0.85))
        for match in self._line_start_word.finditer(text):
            bare = match.group(1)
            if len(bare) < 3 or bare.isupper() or bare.lower() in _FUNCTION_WORDS or not self._person_verb.match(text, match.end(1)):
                continue
            kind = lexicon.kind(bare)
            verb = self._person_verb.match(text, match.end(1)).group().split()
            # a word that is also English ("Hope is from church", "Will began to") needs a verb only people take
            if kind in (LISTED, UNKNOWN) or (kind == AMBIGUOUS and self._name_like(bare) and bare[0].isupper()
                                             and (verb[0] in ("lives", "lived", "grew", "spent", "had", "has")
                                                  or verb[:2] == ["began", "writing"])):
                spans.append(Span(match.start(1), match.end(1), NAME, 0.8))
        for match in self._work.finditer(text):
            pieces = [w.rstrip(".") for w in match.group(1).split()]
            long = [w for w in pieces if len(w) > 1]
            if long and all(lexicon.kind(w) != NEVER and w.lower() not in _FUNCTION_WORDS
                            and (lexicon.kind(w) != AMBIGUOUS or self._name_like(w)) for w in long):
                spans.append(Span(match.start(1), match.start(1) + len(match.group(1).rstrip(".")), NAME, 0.8))
        if "," in text:
            for match in self._lower_list.finditer(text):
                members = list(re.finditer(r"[^\W\d_]+", match.group(1)))
                members = [m for m in members if m.group() not in ("and",)]
                kinds = [lexicon.kind(m.group()) for m in members]
                firsts = sum(lexicon.is_first(m.group()) and k != NEVER for m, k in zip(members, kinds))
                unknown = sum(k == UNKNOWN for k in kinds)
                if (len(members) >= 3 and NEVER not in kinds and unknown <= 1 and firsts >= len(members) - 1
                        and not any(m.group() in _FUNCTION_WORDS for m in members)):
                    for m in members:
                        spans.append(Span(match.start(1) + m.start(), match.start(1) + m.end(), NAME, 0.8))

    @staticmethod
    def _sentence_start(text: str, at: int) -> bool:
        """First word of a sentence or line, where a word is capitalised anyway ("Hope states she slept")."""
        before = text[max(0, at - 4):at].rstrip(" \t\"'“(")
        return not before or before[-1] in ".!?:;\n"

    def _name_like(self, word: str) -> bool:
        """A word that is also a name (Graves, White), not a pronoun or function word that a name list holds (He, Will)."""
        return (len(word) > 2 and word.lower() not in _FUNCTION_WORDS
                and (self.lexicon.is_first(word) or self.lexicon.is_last(word)))

    def _mark_name_lists(self, text: str, tokens: list[re.Match[str]], words: list[str], kinds: list[int],
                         caps: list[bool], upper: list[bool], skip: list[bool], name: list[bool]) -> set[int]:
        """Capitalised words listed with a name ("seen by Smith, Graves and Reed"): names too.

        A list counts when one member is already a name, is a listed name that is no
        English word, or two members are names that are also words (Graves, Reed);
        every member must be capitalised, not possessive (Parkinson's, Crohn's) and
        either a name or a word of no vocabulary. Not when an organisation word
        follows (Davis, Reynolds and Williamson Orchestra). Returns the members of lists of three or more, or
        with an "and": one name each, not "Last, First".
        """
        n = len(tokens)
        apart: set[int] = set()
        i = 0
        while i < n:
            j = i
            while (j + 1 < n and self._list_gap.fullmatch(text, tokens[j].end(), tokens[j + 1].start())
                   and "\n" not in text[tokens[j].end():tokens[j + 1].start()]):
                j += 1
            if j > i:
                members = range(i, j + 1)
                usable = all(caps[k] and not skip[k] and kinds[k] != NEVER and words[k] == tokens[k].group() and (
                    kinds[k] != AMBIGUOUS or self._name_like(words[k])) for k in members)
                anchored = (any(name[k] for k in members) or any(kinds[k] == LISTED and not upper[k] for k in members)
                            or sum(self._name_like(words[k]) for k in members) >= 2)
                tail = text[tokens[j].end():tokens[j].end() + 40]
                organisation = re.match(r"[\s,]+(?:(?:[A-Z][a-z]+\s+){0,2})(?:Orchestra|Band|Inc|LLC|Ltd|Corp|Group|"
                                        r"Associates|Partners|Law|Hospital|Clinic|Center|Centre|Company|Co\b|PC|LLP)", tail)
                if usable and anchored and not organisation:
                    for k in members:
                        if not upper[k] or name[k]:
                            name[k] = True
                    gaps = [text[tokens[k].end():tokens[k + 1].start()] for k in range(i, j)]
                    if j - i >= 2 or any("," not in gap for gap in gaps):
                        apart.update(members)
            i = j + 1
        return apart

    @staticmethod
    def _in_code(text: str, start: int, end: int) -> bool:
        """Part of an e-mail, URL, identifier or file name, not a word of prose."""
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        return before in "@_/\\=" or after in "@_\\" or before.isdigit() or after.isdigit() or (
            after == "." and end + 1 < len(text) and text[end + 1].isalpha() and text[end + 1].islower())

    @staticmethod
    def _joined(text: str, left: re.Match[str], right: re.Match[str]) -> bool:
        gap = text[left.end():right.start()]
        return bool(re.fullmatch(r" |  |, ?|,\s?| [A-Z]\. ?| [A-Z] |-", gap)) and "\n" not in gap

    def _neighbour_listed(self, i: int, kinds: list[int], upper: list[bool], tokens: list[re.Match[str]],
                          text: str) -> bool:
        for j in (i - 1, i + 1):
            if 0 <= j < len(kinds) and kinds[j] in (LISTED, AMBIGUOUS) and self._joined(
                    text, tokens[min(i, j)], tokens[max(i, j)]) and "," in text[tokens[min(i, j)].end():tokens[max(i, j)].start()]:
                return True
        return False
