"""The de-identification policy as data: what crosses, renamed and generalised, and pseudonyms."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence

import pandas as pd
import pytest

from medllm_pipelines.lib.deidentify.policy import (
    age_band,
    age_in_years,
    apply_policy,
    build_pseudonym_map,
    digest_to_hex,
    load_policy,
)

TEST_HMAC_KEY = b"unit-test-pseudonym-key"
RESIDENT_ID = "11010519491231002X"  # valid check digit
INVALID_RESIDENT_ID = "110105194912310021"


def fake_hmac_many(values: Sequence[str]) -> list[str]:
    """Stands in for Vault transit ``hmac`` (hex here; Vault answers ``vault:v1:<base64>``)."""
    return [hmac.new(TEST_HMAC_KEY, v.encode(), hashlib.sha256).hexdigest() for v in values]


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def test_policy_file_declares_the_direct_identifiers_as_removed(policy):
    patients = {rule.column: rule for rule in policy.tables["patients"]}

    for column in ("mrn", "resident_id", "name_zh", "name_en", "phone", "email", "address"):
        assert patients[column].action == "remove"
    assert (patients["birth_date"].action, patients["birth_date"].argument) == ("generalise", "age_band")
    assert policy.version and policy.pseudonym_hex_chars == 24


@pytest.mark.parametrize(
    "spec",
    ["    name_zh: blur\n", "    name_zh: {encrypt: true}\n", "    name_zh: {keep: true, remove: true}\n"],
)
def test_policy_with_an_unknown_action_is_refused(tmp_path, spec):
    text = (
        'version: "0"\npurpose: test\npseudonym: {prefix: "p_", hex_chars: 8}\n'
        "age_bands: {width_years: 5, top_coded_at: 90}\ntables:\n  patients:\n" + spec
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)

    with pytest.raises(ValueError, match="name_zh"):
        load_policy(path)


# --- generalisers -------------------------------------------------------------
@pytest.mark.parametrize(
    ("age", "band"),
    [(0, "0-4"), (4, "0-4"), (5, "5-9"), (44, "40-44"), (45, "45-49"), (89, "85-89"), (90, "90+"), (103, "90+")],
)
def test_age_band_boundaries(age, band):
    assert age_band(age, 5, 90) == band


@pytest.mark.parametrize(
    ("birth", "as_of", "age"),
    [
        (dt.date(1980, 6, 2), dt.date(2024, 6, 1), 43),  # the day before the birthday
        (dt.date(1980, 6, 2), dt.date(2024, 6, 2), 44),
        (dt.date(2000, 2, 29), dt.date(2023, 2, 28), 22),
        (dt.date(2000, 2, 29), dt.date(2023, 3, 1), 23),
    ],
)
def test_age_in_years(birth, as_of, age):
    assert age_in_years(birth, as_of) == age


# --- apply_policy -------------------------------------------------------------
CLEAN_PATIENTS = pd.DataFrame(
    {
        "patient_key": ["k1", "k2", "k3", "k4"],
        "institution": ["h1", "h1", "h2", "h2"],
        "gender": ["female", "male", "unknown", "female"],
        "birth_date": ["1980-06-02", "1979-06-01", "1934-01-01", None],
        "mrn": ["MRN001", "MRN002", "MRN003", "MRN004"],
        "resident_id": [RESIDENT_ID, None, None, None],
        "name_zh": ["欧阳娜娜", "张三", "李四", "王五"],
        "phone": ["13812345678", None, None, None],
        "resident_id_valid": [True, False, False, False],  # not declared: must not cross
        "source_object": ["a" * 64] * 4,
    }
)
PERSONS = {("h1", "k1"): "p_one", ("h1", "k2"): "p_two", ("h2", "k4"): "p_four"}  # k3 cannot be linked


def test_patients_cross_only_as_declared(policy):
    reference = pd.Series([dt.date(2024, 6, 1)] * 4, index=CLEAN_PATIENTS.index)

    outcome = apply_policy("patients", CLEAN_PATIENTS, policy, person_by_key=PERSONS, age_reference=reference)

    assert list(outcome.frame.columns) == ["patient_pseudonym", "institution", "sex", "age_band"]
    assert outcome.frame.to_dict("records") == [
        {"patient_pseudonym": "p_one", "institution": "h1", "sex": "female", "age_band": "40-44"},
        {"patient_pseudonym": "p_two", "institution": "h1", "sex": "male", "age_band": "45-49"},
        {"patient_pseudonym": "p_four", "institution": "h2", "sex": "female", "age_band": None},
    ]
    assert sorted(outcome.removed_columns) == ["mrn", "name_zh", "phone", "resident_id"]
    assert outcome.undeclared_columns == ["resident_id_valid", "source_object"]
    assert outcome.unlinked_rows == 1
    assert list(outcome.kept_index) == [0, 1, 3]
    text = outcome.frame.to_csv()
    assert not [v for v in ("欧阳娜娜", "张三", "MRN001", RESIDENT_ID, "13812345678", "1980-06-02", "k1") if v in text]


def test_the_oldest_are_top_coded(policy):
    frame = CLEAN_PATIENTS.iloc[[2]].assign(patient_key="k1", institution="h1")

    outcome = apply_policy(
        "patients", frame, policy, person_by_key=PERSONS, age_reference=pd.Series([dt.date(2024, 6, 1)], index=frame.index)
    )

    assert outcome.frame["age_band"].tolist() == ["90+"]


def test_dates_are_generalised_to_the_year(policy):
    observations = pd.DataFrame(
        {
            "patient_key": ["k1", "k2", "k3"],
            "institution": ["h1", "h1", "h2"],
            "concept": ["hba1c"] * 3,
            "loinc": ["4548-4"] * 3,
            "value": [6.1, 7.2, 5.0],
            "unit": ["%"] * 3,
            "effective_date": ["2023-12-31", None, "2024-01-01"],
            "effective_at": ["2023-12-31T01:00:00+00:00", None, None],
        }
    )

    outcome = apply_policy("observations", observations, policy, person_by_key=PERSONS)

    assert outcome.frame["effective_year"].tolist()[0] == 2023
    assert pd.isna(outcome.frame["effective_year"].tolist()[1])
    assert "effective_date" not in outcome.frame and "effective_at" not in outcome.frame
    assert outcome.undeclared_columns == ["effective_at"]
    assert outcome.unlinked_rows == 1


def test_dicom_ids_become_keyed_hashes_and_patients_are_found_by_mrn(policy):
    dicom = pd.DataFrame(
        {
            "sop_instance_uid": ["1.2.3.4", "1.2.3.5", "1.2.3.6"],
            "patient_id": ["MRN001", "MRN001", "MRN999"],
            "institution": ["h1", "h1", "h1"],
            "modality": ["CT", "CT", "MR"],
            "patient_name": ["Zhang^San", "Zhang^San", "Li^Si"],
        }
    )
    by_mrn = {("h1", "MRN001"): "p_one"}

    outcome = apply_policy(
        "dicom_instances", dicom, policy, person_by_key={}, person_by_mrn=by_mrn, hmac_many=fake_hmac_many
    )

    expected = "p_" + hmac.new(TEST_HMAC_KEY, b"1.2.3.4", hashlib.sha256).hexdigest()[:24]
    assert outcome.frame["image_id"].tolist()[0] == expected
    assert outcome.frame["image_id"].nunique() == 2
    assert outcome.frame["patient_pseudonym"].tolist() == ["p_one", "p_one"]
    assert outcome.unlinked_rows == 1
    assert "patient_name" in outcome.removed_columns
    assert "1.2.3.4" not in outcome.frame.to_csv()


def test_keyed_hash_without_the_vault_hmac_is_refused(policy):
    dicom = pd.DataFrame({"sop_instance_uid": ["1.2.3.4"], "patient_id": ["MRN001"], "institution": ["h1"]})

    with pytest.raises(ValueError, match="HMAC"):
        apply_policy("dicom_instances", dicom, policy, person_by_key={}, person_by_mrn={})


# --- pseudonyms ---------------------------------------------------------------
def test_one_person_at_two_institutions_gets_one_pseudonym(policy):
    patients = pd.DataFrame(
        {
            "institution": ["h1", "h2", "h1", "h2", "h2", "h3"],
            "resource_key": ["a", "b", "c", "d", "e", "f"],
            "resident_id": [RESIDENT_ID, RESIDENT_ID.lower(), INVALID_RESIDENT_ID, INVALID_RESIDENT_ID, None, None],
            "mrn": ["M1", "M9", "M2", "M2", "M2", None],
        }
    )

    mapping = build_pseudonym_map(patients, fake_hmac_many, policy).set_index("patient_key")

    assert mapping.loc["a", "patient_pseudonym"] == mapping.loc["b", "patient_pseudonym"]
    assert mapping.loc[["a", "b"], "link_kind"].tolist() == ["resident-id", "resident-id"]
    # An invalid resident ID does not link: institution + MRN does.
    assert mapping.loc[["c", "d"], "link_kind"].tolist() == ["mrn", "mrn"]
    assert mapping.loc["c", "patient_pseudonym"] != mapping.loc["d", "patient_pseudonym"]
    assert mapping.loc["d", "patient_pseudonym"] == mapping.loc["e", "patient_pseudonym"]  # same MRN, same site
    assert mapping.loc["f", "link_kind"] == "record"
    assert mapping["patient_pseudonym"].str.fullmatch(r"p_[0-9a-f]{24}").all()
    assert mapping["patient_pseudonym"].nunique() == 4


def test_pseudonyms_depend_on_the_key(policy):
    patients = pd.DataFrame({"institution": ["h1"], "resource_key": ["a"], "resident_id": [RESIDENT_ID], "mrn": ["M1"]})

    def other_key(values: Sequence[str]) -> list[str]:
        return [hmac.new(b"another key", v.encode(), hashlib.sha256).hexdigest() for v in values]

    one = build_pseudonym_map(patients, fake_hmac_many, policy)["patient_pseudonym"].iloc[0]
    two = build_pseudonym_map(patients, other_key, policy)["patient_pseudonym"].iloc[0]

    assert one != two


DIGEST = hashlib.sha256(b"x").digest()


@pytest.mark.parametrize(
    "encoded",
    [
        "vault:v1:" + base64.b64encode(DIGEST).decode(),
        "vault:v12:" + base64.b64encode(DIGEST).decode(),
        base64.b64encode(DIGEST).decode(),
        DIGEST.hex(),
    ],
    ids=["vault_v1", "vault_v12", "base64", "hex"],
)
def test_digest_to_hex_accepts_vault_base64_and_hex(encoded):
    assert digest_to_hex(encoded) == DIGEST.hex()


@pytest.mark.parametrize("encoded", ["vault:v1:not base64!", "zz-not-a-digest"])
def test_digest_to_hex_refuses_garbage(encoded):
    with pytest.raises(ValueError, match="digest"):
        digest_to_hex(encoded)


# --- purposes (clause 4.2.1: purpose limitation, data minimisation per purpose) ---------
def test_the_default_purpose_is_the_model_development_one(policy) -> None:
    assert policy.purpose_id == "t2d_model_development"
    assert "type 2 diabetes" in policy.purpose
    assert set(policy.purposes) == {"t2d_model_development", "data_quality_reporting"}


def test_a_narrower_purpose_lets_fewer_columns_cross_and_reports_the_rest() -> None:
    narrow = load_policy(purpose="data_quality_reporting")
    assert narrow.purpose_id == "data_quality_reporting"
    observations = pd.DataFrame({
        "patient_key": ["k1"], "institution": ["h1"], "concept": ["hba1c"], "loinc": ["4548-4"], "value": [7.1],
        "unit": ["%"], "effective_date": ["2024-03-01"],
    })
    outcome = apply_policy("observations", observations, narrow, person_by_key=PERSONS)
    assert "value" not in outcome.frame.columns  # a clinical value is not needed to report completeness
    assert outcome.undeclared_columns == ["value"]
    assert list(outcome.frame.columns) == ["patient_pseudonym", "institution", "concept", "loinc", "unit",
                                           "effective_year"]
    # identifiers stay removed (and reported as such) whatever the purpose
    patients = apply_policy("patients", CLEAN_PATIENTS, narrow, person_by_key=PERSONS,
                            age_reference=pd.Series([dt.date(2024, 6, 1)] * 4, index=CLEAN_PATIENTS.index))
    assert sorted(patients.removed_columns) == ["mrn", "name_zh", "phone", "resident_id"]


def test_an_unknown_purpose_is_refused_with_the_declared_ones_named() -> None:
    with pytest.raises(ValueError, match="unknown processing purpose 'marketing'.*data_quality_reporting"):
        load_policy(purpose="marketing")


def test_the_library_never_reads_the_purpose_from_the_environment(monkeypatch) -> None:
    """The caller passes the purpose (run_settings, Settings.purpose): MEDLLM_PURPOSE alone changes nothing here."""
    monkeypatch.setenv("MEDLLM_PURPOSE", "data_quality_reporting")
    assert load_policy().purpose_id == "t2d_model_development"


def test_a_purpose_naming_an_undeclared_column_is_refused(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        'version: "0"\ndefault_purpose: a\npurposes:\n  a:\n    description: x\n    columns:\n'
        '      patients: [patient_key, shoe_size]\n'
        'pseudonym: {prefix: "p_", hex_chars: 8}\nage_bands: {width_years: 5, top_coded_at: 90}\n'
        'tables:\n  patients:\n    patient_key: {pseudonymise: person, as: patient_pseudonym}\n'
    )
    with pytest.raises(ValueError, match=r"purpose a: patients has no declared column\(s\) \['shoe_size'\]"):
        load_policy(path)
