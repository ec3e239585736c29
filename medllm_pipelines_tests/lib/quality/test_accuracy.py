"""Double verification of key values and near-duplicate patients across institutions."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.quality.accuracy import (
    CANDIDATE_NO_ID,
    CANDIDATE_ONE_SIDED,
    CONFLICT,
    DISAGREEMENT_COLUMNS,
    LINK_COLUMNS,
    LINKED_BY_RESIDENT_ID,
    MATCH_RULE,
    double_verification_details,
    find_disagreements,
    link_patients,
    local_hmac,
    near_duplicate_details,
    normalise_name,
)
from medllm_pipelines.lib.quality.cleaning import load_rules

SOURCE = "a1b2c3d4e5f6" + "0" * 52
KEYED = local_hmac(b"test-key-not-a-secret")


def obs(n: int, institution: str, patient: str, concept: str, value: float, day: str, unit: str = "%") -> dict:
    return {"institution": institution, "patient_key": patient, "concept": concept, "unit": unit, "value": value,
            "effective_date": day, "resource_key": f"o{n}", "source_object": SOURCE, "source_position": n}


def test_same_day_results_from_two_institutions_that_disagree_are_listed_by_record():
    observations = pd.DataFrame([
        obs(0, "h1", "p1", "hba1c", 6.1, "2024-03-05"),
        obs(1, "h2", "q7", "hba1c", 7.4, "2024-03-05"),  # same person at h2: 1.3 % apart
        obs(2, "h2", "q7", "hba1c", 6.3, "2024-03-20"),  # outside the window
        obs(3, "h1", "p1", "fasting_glucose", 6.0, "2024-03-05", "mmol/L"),
        obs(4, "h1", "p1", "fasting_glucose", 6.4, "2024-03-05", "mmol/L"),  # duplicate measurement, agrees
    ])
    person_of = pd.DataFrame({"institution": ["h1", "h2"], "patient_key": ["p1", "q7"],
                              "person_ref": ["p_abc", "p_abc"]})
    rules = load_rules()

    found = find_disagreements(observations, rules.double_verification["tolerances"],
                               window_days=rules.double_verification["window_days"], person_of=person_of)

    assert list(found.columns) == DISAGREEMENT_COLUMNS
    assert found[["concept", "record_a", "record_b", "days_apart", "same_institution"]].to_dict("records") == [
        {"concept": "hba1c", "record_a": "a1b2c3d4e5f6#0", "record_b": "a1b2c3d4e5f6#1", "days_apart": 0,
         "same_institution": False}
    ]
    assert found.loc[0, "abs_difference"] == pytest.approx(1.3)
    assert "6.1" not in found.to_string() and "7.4" not in found.to_string()


def test_without_linkage_only_duplicate_measurements_of_one_record_are_compared():
    observations = pd.DataFrame([
        obs(0, "h1", "p1", "systolic_bp", 120, "2024-03-05", "mm[Hg]"),
        obs(1, "h1", "p1", "systolic_bp", 165, "2024-03-06", "mm[Hg]"),
        obs(2, "h2", "p1", "systolic_bp", 100, "2024-03-05", "mm[Hg]"),  # another institution's p1: not the same person
    ])

    found = find_disagreements(observations, {"systolic_bp": 20.0}, window_days=1)

    assert found[["record_a", "record_b", "days_apart"]].values.tolist() == [["a1b2c3d4e5f6#0", "a1b2c3d4e5f6#1", 1]]
    assert find_disagreements(observations.iloc[0:0], {"systolic_bp": 20.0}).empty


@pytest.mark.parametrize(
    ("a", "b"),
    [(("张三", None), (" 张 三 ", None)), ((None, "Zhang San"), (None, "san  ZHANG")), (("张三", "Zhang San"), ("张三", None))],
)
def test_names_normalise_for_linkage(a, b):
    assert normalise_name(*a) == normalise_name(*b)


def patient(institution: str, key: str, name: str, birth: str, resident_id: str | None, valid: bool, n: int) -> dict:
    return {"institution": institution, "resource_key": key, "name_zh": name, "name_en": None, "birth_date": birth,
            "resident_id": resident_id, "resident_id_valid": valid, "source_object": SOURCE, "source_position": n}


def test_near_duplicate_patients_are_linked_by_a_keyed_hash_with_the_rule_stated():
    patients = pd.DataFrame([
        patient("h1", "k1", "李四", "1980-01-02", "110105198001020018", True, 0),
        patient("whsy", "k2", "李四", "1980-01-02", None, False, 1),  # same person, no resident ID in PID
        patient("h2", "k3", "王五", "1975-05-05", "110105197505050013", True, 2),
        patient("h3", "k4", "王五", "1975-05-05", "110105197505050013", True, 3),  # same valid ID: linked
        patient("h1", "k5", "赵六", "1990-09-09", "110105199009090011", True, 4),
        patient("h2", "k6", "赵六", "1990-09-09", "110105199009090038", True, 5),  # namesakes: review
        patient("h1", "k7", "钱七", "1960-01-01", None, False, 6),
        patient("h1", "k8", "钱七", "1960-01-01", None, False, 7),  # same institution: not a cross-site link
        patient("h2", "k9", "孙八", "1970-07-07", None, False, 8),
        patient("h3", "k10", "孙八", "1970-07-07", "bad", False, 9),
    ])

    links = link_patients(patients, KEYED)

    assert list(links.columns) == LINK_COLUMNS
    decisions = {(r.resource_key_a, r.resource_key_b): r.decision for r in links.itertuples()}
    assert decisions == {("k1", "k2"): CANDIDATE_ONE_SIDED, ("k3", "k4"): LINKED_BY_RESIDENT_ID,
                         ("k5", "k6"): CONFLICT, ("k9", "k10"): CANDIDATE_NO_ID}
    assert set(links["match_rule"]) == {MATCH_RULE}
    text = links.to_string()
    assert not [v for v in ("李四", "1980-01-02", "110105198001020018") if v in text]
    assert links["link_key"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_the_synthetic_hl7_institution_gives_one_sided_candidates(parsed_hospital):
    cleaned, manifest = parsed_hospital.patients, parsed_hospital.manifest

    links = link_patients(cleaned, KEYED)

    whsy = links[(links["institution_a"] == "whsy") | (links["institution_b"] == "whsy")].copy()
    whsy["whsy_key"] = whsy["resource_key_a"].where(whsy["institution_a"] == "whsy", whsy["resource_key_b"])
    decisions = whsy.groupby("whsy_key")["decision"].agg(set)  # a person may also be registered at a 3rd site
    without_id = len(manifest.counts["whsy"]["persons_without_resident_id_in_pid"])
    assert len(decisions) == manifest.counts["whsy"]["patient_records"]  # every whsy patient found its twin
    assert (decisions == {CANDIDATE_ONE_SIDED}).sum() == without_id
    assert (decisions == {LINKED_BY_RESIDENT_ID}).sum() == len(decisions) - without_id


def test_double_verification_details_count_disagreements_and_show_addresses_not_values():
    observations = pd.DataFrame([obs(i, "h1", "p1", "hba1c", v, "2024-03-05") for i, v in enumerate((6.1, 7.4, 8.8))])

    details = double_verification_details(observations, {"tolerances": {"hba1c": 0.5}, "window_days": 0}, examples=2)

    assert details["double_verification_disagreements"] == 3
    examples = details["double_verification_examples"]
    assert examples["tolerances"] == {"hba1c": 0.5} and len(examples["records"]) == 2
    assert {"record_a", "record_b", "abs_difference"} <= set(examples["records"][0])
    assert not {"person_ref", "patient_key", "value"} & set(examples["records"][0])
    assert "6.1" not in str(examples) and "7.4" not in str(examples)


def test_near_duplicate_details_count_pairs_by_resident_id_status():
    patients = pd.DataFrame([
        patient("h1", "k1", "李四", "1980-01-02", "110105198001020018", True, 0),
        patient("whsy", "k2", "李四", "1980-01-02", None, False, 1),
        patient("h2", "k3", "王五", "1975-05-05", "110105197505050013", True, 2),
        patient("h3", "k4", "王五", "1975-05-05", "110105197505050013", True, 3),
    ])

    details = near_duplicate_details(link_patients(patients, KEYED))

    assert details["near_duplicate_pairs_by_status"] == {"both_valid_same": 1, "one_side_valid": 1}
    assert details["near_duplicate_match_rule"] == MATCH_RULE
    assert near_duplicate_details(link_patients(patients.iloc[0:0], KEYED))["near_duplicate_pairs_by_status"] == {}
