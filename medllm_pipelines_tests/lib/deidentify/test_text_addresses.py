"""Addresses in prose (``text/addresses.py``): street lines in many countries' forms and what follows them."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.text import build_detector
from medllm_pipelines.lib.deidentify.text.detector import Detector
from medllm_pipelines_tests.lib.deidentify.text_spans import found, labelled


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Address: 55 Elm St\nBoston, MA 02114", "Boston"),  # town and state of an address are places (i2b2 CITY)
        ("Address: 55 Elm St\nBoston, MA 02114", "MA"),
        ("41086 Kiannonkatu 98\nSuite 464\nOULU\nFinland 80896", "OULU"),
        ("41086 Kiannonkatu 98\nSuite 464\nOULU\nFinland 80896", "Finland"),
    ],
)
def test_town_region_and_country_after_a_street_are_locations(detector: Detector, text: str, value: str) -> None:
    assert value in labelled(detector, text, "LOCATION"), found(detector, text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("41086 Kiannonkatu 98\nSuite 464\nOULU\nFinland 80896", "80896"),
        ("He lives at 12 Main Street, Springfield, IL 62704.", "12 Main Street, Springfield, IL 62704"),  # one US line: one span
        ("Meet at the corner of Asselsestraat 7 and Martinez Mall St.", "Martinez Mall St."),  # a street named after a person
        ("He lives on Eriksson Bridge Road.", "Eriksson Bridge Road"),
        ("PSC 0413, Box 8144\nAPO AA 42323", "AA"),  # a military post code is no place
    ],
)
def test_address_parts(detector: Detector, text: str, value: str) -> None:
    assert value in labelled(detector, text, "ADDRESS"), found(detector, text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # flats, suites and apartments, on their own line or after a street
        ("Address: 450 Oak Pkwy Suite 300", "450 Oak Pkwy Suite 300"),
        ("Home: 88 Harbor Ter, Apt 5B", "88 Harbor Ter, Apt 5B"),
        ("Address: Suite 300\nBoston, MA 02114", "Suite 300"),
        ("Forward mail to Apartment 4C", "Apartment 4C"),
        ("> 77 Ringvej 144\n> Apt. 902\n> Qaqortoq\n> Denmark 96817", "96817"),  # a quoted e-mail's address block
        # post office boxes and rural routes
        ("Mailing address: PO Box 1234, Springfield, IL 62704", "PO Box 1234"),
        ("Send the forms to P.O. Box 77.", "P.O. Box 77"),
        ("He lives on Rural Route 2, Box 14.", "Rural Route 2, Box 14"),
        ("Postbox 53\nNarsarsuaq", "Postbox 53"),
        # USPS street types, house numbers with letters, fractions and ranges
        ("Resides at 45 Lakeview Cir.", "45 Lakeview Cir."),
        ("Pt lives at 12A Main St with his wife.", "12A Main St"),
        ("Lives at 12 1/2 Elm Street.", "12 1/2 Elm Street."),
        ("Lives at 12-14 Oak Avenue", "12-14 Oak Avenue"),
        ("Moved into 9 Cedar Xing last spring.", "9 Cedar Xing"),
        ("Her son drove in from 300 Route Tpke.", "300 Route Tpke."),
        ("The restaurant is at 17151 2450 Crown St", "17151 2450 Crown St"),  # a building number before the street
        # other countries
        ("221B Baker Street, London NW1 6XE", "221B Baker Street"),
        ("221B Baker Street, London NW1 6XE", "NW1 6XE"),
        ("Her postcode is SW1A 1AA.", "SW1A 1AA"),
        ("Postal code: K1A 0B1", "K1A 0B1"),
        ("Lives at 7 Willow Close, Leeds LS6 2AB.", "7 Willow Close"),
        ("He lives at Hauptstraße 5 in Berlin.", "Hauptstraße 5"),
        ("She moved to 12 rue de la Paix last year.", "12 rue de la Paix"),
        ("Lives on Calle Mayor 14 with her daughter.", "Calle Mayor 14"),
        ("Ciset lives on Rua Mina 50 now.", "Rua Mina 50"),
        ("sent to Hanne and ul. Miła 53", "ul. Miła 53"),
        ("Please mail it to Kuusiku 7 before Friday.", "Kuusiku 7"),
        ("my zip code is 35350", "35350"),
        ("Zip code is 02114-1234.", "02114-1234"),
        ("ul. Słowicza 10\nWrocław\nPoland 53-320", "53-320"),
        # intersections: each street its own span
        ("The patient lives at the corner of Main Street and Elm.", "Main Street"),
        ("Found at the junction of Oak Road and Pine Street after the fall.", "Pine Street"),
        ("Meet me at the corner of Bygget 64 and Komel Club", "Bygget 64"),
    ],
)
def test_street_addresses_in_many_forms(detector: Detector, text: str, value: str) -> None:
    # covered by an address span (a cue's neighbour or the town may ride along: "Hanne and ul. Miła 53")
    assert any(value in masked for masked in labelled(detector, text, "ADDRESS")), found(detector, text)


@pytest.mark.parametrize(
    "text",
    ["Pt walked 12 laps around the unit with PT.", "Flat T waves in V4-V6; heparin 5000 units.",
     "RR 18, HR 72, BP 120/80, sat 98% on RA.", "BP is at 120 Systolic now", "Pain is at 7 Today",
     "Given via NG tube 3 times daily.", "H1N1 vaccine given; HC 34 cm; L4 5S1 disc bulge.",
     "Lives at home with wife; dropped off at ED 3 days ago.", "Moved to Room 12 overnight.",
     "Returned to Step 2 of the protocol.", "Follow up in 2 weeks at the same suite."],
)
def test_address_rules_leave_clinical_numbers_alone(detector: Detector, text: str) -> None:
    assert labelled(detector, text, "ADDRESS") == [], found(detector, text)
