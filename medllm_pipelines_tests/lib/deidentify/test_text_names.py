"""Names written in prose (``text/names.py``): without a template, told by a cue, a list, a verb or the sentence.

Phrasings are varied on purpose (notes are written by people, not templates),
and the clinical whitelist is tested the other way round: words a careless
name list would mask (HEPARIN, CARDIAC, WITH, Lasix) must stay readable.
"""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines_tests.lib.deidentify.text_spans import found, labelled


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector()


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Pt seen by smith this am, plan unchanged.", "smith"),  # lower case after "seen by"
        ("Discussed with wife Mary at the bedside.", "Mary"),  # relative + ambiguous first name
        ("His daughter, Jennifer, will drive him home.", "Jennifer"),
        ("OROZCO,KYLE   presented to the ED", "OROZCO,KYLE"),  # Last,First in capitals
        ("Kowalski, Anna is a 63 yo woman with CHF", "Kowalski, Anna"),
        ("Called Dr. Brown re: INR.", "Brown"),  # a surname that is also a word, after a title
        ("Teresa Kreutzmann was admitted overnight.", "Teresa Kreutzmann"),  # surname in no list
        ("follow up with patricia desrosiers in a couple of months", "patricia desrosiers"),
        ("Dictated by: Xzavian G. Tavares, M.D.", "Xzavian G. Tavares"),
        ("Per nephew Tomasz the patient lives alone.", "Tomasz"),
    ],
)
def test_names_without_a_template(detector: Detector, text: str, name: str) -> None:
    assert name in labelled(detector, text, "NAME"), found(detector, text)


@pytest.mark.parametrize(
    ("text", "initials"),
    [("XGT:holmes", "XGT:holmes"), ("Electronically signed.\nJS/mk", "JS/mk"), ("cc: AB/cd, chart", "AB/cd")],
)
def test_signature_initials_and_usernames(detector: Detector, text: str, initials: str) -> None:
    assert initials in labelled(detector, text, "NAME")


@pytest.mark.parametrize(
    "text",
    [
        "HEPARIN DRIP STARTED. CARDIAC CATH WITH CONTRAST TOMORROW.",
        "Heparin gtt, cardiac diet, with Lasix 40 mg IV BID and metoprolol 25 mg PO.",
        "COPD exacerbation; continue Advair, albuterol prn. Parkinson's disease, Crohn disease.",
        "Will continue current plan. Hope to discharge soon. Brown sputum noted.",
    ],
)
def test_clinical_words_are_never_names(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "NAME") == []


# names told by their place in the sentence (recognisers 2.4.0): invented names, varied phrasings
@pytest.mark.parametrize(
    ("text", "names"),
    [
        # a dialogue speaker: a name, a colon, then speech (a quotation or I/you/me)
        ("Ella: What a wife.\nDestiny: Remember me? I was there.", ["Destiny"]),
        ('Alexander: "Who are you?"\nOrsolya: "I am the night nurse."', ["Alexander", "Orsolya"]),
        ('mika: "who are you?"\ntracy:"i\'m her daughter".', ["mika", "tracy"]),
        # vocatives: the addressee between a comma and a ? or !, or first and asked something
        ("Remember me, Mary? We met last spring.", ["Mary"]),
        ("Don't go to town, Derrick!", ["Derrick"]),
        ("Warrane, can I please speak to your manager?", ["Warrane"]),
        ("Jolanda, could you bring the consent form", ["Jolanda"]),
        ("Tamsin, please call the pharmacy back.", ["Tamsin"]),
        # greetings and sign-offs
        ("Hi Sarah,\nthe results are back.", ["Sarah"]),
        ("Thanks, Jacob. Talk soon.", ["Jacob"]),
        ("Kind regards,\nAmy Okonkwo", ["Amy Okonkwo"]),
        ("Sincerely,\n\nSandra Vuković", ["Sandra Vuković"]),
        # a name told by a phrase, in any case
        ("name:    hyuuma t. maida\naddress: unit 4", ["hyuuma t. maida"]),
        ("my name is borna jerković but everyone calls me b", ["borna jerković"]),
        ("She named him Luís after his grandfather.", ["Luís"]),
        ("sometimes people call me višeslav", ["višeslav"]),
        # a creator before a work
        ("Unlike the Dratchev novel, it is short.", ["Dratchev"]),
        ("the codey m ross version recorded in 1990", ["codey m ross"]),
        ("I prefer the Halldór Ó Árnþórsson recording.", ["Halldór Ó Árnþórsson"]),
        # a list of given names in lower case
        ("they had 6: silvana, adam, christopher, kristina, chad and caleb.", ["silvana", "adam", "caleb"]),
        ("visitors today: brian, pamela, terrence & donna", ["brian", "pamela", "donna"]),
        # a sentence-initial name told by a verb only people take
        ("Jacob lives on a farm outside town.", ["Jacob"]),
        ("selma is from stillwater. bártová began writing as a teenager.", ["selma", "bártová"]),
        ("Walker began writing as a teenager.", ["Walker"]),
        # the other person of a telling
        ("I'm so jealous! said Carla to Sandra", ["Carla", "Sandra"]),
        ("David had given Angel his address last week.", ["Angel"]),
        ("The nurse handed Marisol her discharge papers.", ["Marisol"]),
        # a name line above an organisation line or a blank line stays a name (no organisation across lines)
        ("Katrina Mota\nKnowledge Agency\n55470 Ach Street", ["Katrina Mota"]),
        ("Albert Svenningsen\n\nChildren's librarian", ["Albert Svenningsen"]),
    ],
)
def test_names_told_by_the_sentence(detector: Detector, text: str, names: list[str]) -> None:
    got = labelled(detector, text, "NAME")
    for name in names:
        assert name in got, found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        # section headers are not speakers: no speech after the colon
        "Pain: 5/10\nPlan: continue heparin\nNeuro: A&O x3\nMood: calm, cooperative",
        "Skin: intact\nDiet: cardiac\nActivity: OOB to chair with walker",
        # a header that is also a given name, over speech, outside a dialogue
        "Neuro: A&O x3\nComfort: pt asked 'are you my nurse?'\nResp: LS clear",
        # lists of drugs and symptoms are not lists of names
        "Meds: heparin, lasix, metoprolol and aspirin. ROS: fever, chills, nausea, vomiting.",
        # a vocative's slot holding a clinical word, a work noun after clinical words
        "Is the pain sharp, Dull? Continue Lasix, please. Use the new version of the protocol.",
        "Patient lives alone. Pt lives with wife. Hope is from church. Will began to improve. Wife lives nearby.",
        "Best Practice Advisory reviewed. Good morning labs drawn.",
        "Nurse gave Lasix 40 mg. Sent Coumadin dosing to pharmacy.",
        "Reviewed the cxr series and the ekg version from the OSH.",
    ],
)
def test_sentence_rules_keep_clinical_text_readable(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "NAME") == [], found(detector, text)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Per the ED note, Graves said the pain started yesterday.", ["Graves"]),  # a surname that is a word, before "said"
        ("Kowalczyk reports no chest pain overnight.", ["Kowalczyk"]),  # a surname in no list, sentence start
        ("Patient's daughter says Wojtaszek will bring the meds.", ["Wojtaszek"]),  # after "says"
        ("Attended by Smith, Graves and Reed during the code.", ["Smith", "Graves", "Reed"]),  # a list of names
        ("Case discussed with Okonkwo and Lindqvist.", ["Okonkwo", "Lindqvist"]),
        ("roberto's daughter is at the bedside", ["roberto"]),  # lower case, before a possessive relative
        ("Spoke to Marchetti's wife by phone.", ["Marchetti"]),
        ("olga krylova was called about the results", ["olga krylova"]),  # lower case first name + surname
        ("follow up with benjamin a seiler in two weeks", ["benjamin a seiler"]),  # with a middle initial
        ("Albert Svenningsen was admitted from home.", ["Albert Svenningsen"]),  # first name that is a word
        ("My name is Destiny Okafor.", ["Destiny Okafor"]),
        ("Her maiden name is Rasmussen.", ["Rasmussen"]),
        ("Reviewed with GRAVES MD", ["GRAVES"]),  # a word that is a surname, before a degree
        ("Note by Brown, MD today.", ["Brown"]),
        ("Smith is a 65 yo male with CHF.", ["Smith"]),  # the classic opening line
        ("White is a 45-year-old woman seen for cough.", ["White"]),
    ],
)
def test_names_told_by_their_context(detector: Detector, text: str, names: list[str]) -> None:
    got = labelled(detector, text, "NAME")
    for name in names:
        assert any(name in value for value in got), found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "He says his pain is gone. She said she feels fine.",  # pronouns before a verb of speech
        "Will reports improvement. Hope states she slept well.",  # words that are also names, sentence start
        "Lasix, Coumadin and Digoxin were held.",  # a list of drugs is no list of names
        "Family states he lives alone. Mother's sister called.",
        "Soft, ND, NT. + bowel sounds.",  # an examination, not North Dakota
        "PT WILL DO PT TODAY. CHEST PA AND LATERAL. Charge RN aware.",  # DO, PA, RN after words
        "Pain is a 5 out of 10. Patient is a 65 yo man.",
        "CV: NSR 80s, no ectopy.\nGI: Abd soft.",  # section headers are no signature initials
        "Hx: Parkinson's, Crohn's, Graves' disease.",  # a list of eponyms is no list of names
    ],
)
def test_context_rules_leave_clinical_prose_readable(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "NAME") == [], found(detector, text)
    assert labelled(detector, text, "LOCATION") == [], found(detector, text)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Dictated by:  FILBERT BRIGHT, M.D.    FB59 \n", "FB59"),  # i2b2 dictation code after the degree
        ("Jane Roe, MD JR12\nD: 07/20/83", "JR12"),
        ("Gilbert P. Perez, M.D.\n\nGPP/church/olinger\n", "GPP/church/olinger"),  # several typists
    ],
)
def test_dictation_codes_and_signature_chains(detector: Detector, text: str, code: str) -> None:
    assert code in labelled(detector, text, "NAME"), found(detector, text)


def test_a_street_word_after_a_first_name_is_a_surname(detector: Detector) -> None:
    assert labelled(detector, "Glenn Close was seen in clinic.", "ADDRESS") == []


def test_a_person_whose_surname_is_a_street_word_stays_a_name(detector: Detector) -> None:
    assert labelled(detector, "John Parks was seen in clinic.", "NAME") == ["John Parks"]
