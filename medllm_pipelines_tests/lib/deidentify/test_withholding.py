"""A registration withheld from the released patients table leaves every person-keyed table, counted by rule."""

from __future__ import annotations

import pandas as pd
import pytest

from medllm_pipelines.lib.deidentify.recoding import RecodingStep, recode_to_k, suppress_value
from medllm_pipelines.lib.deidentify.risk import K_ANONYMITY_SUPPRESSED
from medllm_pipelines.lib.deidentify.withholding import (
    WITHHELD_COLUMNS,
    withheld_persons,
    withheld_registrations,
    withhold,
)

PATIENTS = pd.DataFrame(
    {
        "patient_pseudonym": ["p_a", "p_b", "p_c", "p_c", "p_d"],
        "institution": ["hzsf", "hzsf", "hzsf", "rvic", "rvic"],
        "sex": ["female", "female", "male", "male", "female"],
    }
)
OBSERVATIONS = pd.DataFrame(
    {
        "patient_pseudonym": ["p_a", "p_a", "p_b", "p_c", "p_c", "p_d", "p_d"],
        "institution": ["hzsf", "hzsf", "hzsf", "hzsf", "rvic", "rvic", "rvic"],
        "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
    }
)


def _released_without(*pairs: tuple[str, str]) -> pd.DataFrame:
    keep = [(p, i) not in pairs for p, i in zip(PATIENTS["patient_pseudonym"], PATIENTS["institution"], strict=True)]
    return PATIENTS[keep].reset_index(drop=True)


def test_withheld_registrations_are_the_pairs_the_release_lost() -> None:
    released = _released_without(("p_c", "rvic"), ("p_d", "rvic"))
    withheld = withheld_registrations(PATIENTS, released, K_ANONYMITY_SUPPRESSED)
    assert list(withheld.columns) == WITHHELD_COLUMNS
    assert set(map(tuple, withheld.itertuples(index=False))) == {
        ("p_c", "rvic", K_ANONYMITY_SUPPRESSED),
        ("p_d", "rvic", K_ANONYMITY_SUPPRESSED),
    }


def test_rows_of_a_withheld_registration_leave_with_their_rule_counted() -> None:
    withheld = withheld_registrations(PATIENTS, _released_without(("p_c", "rvic"), ("p_d", "rvic")), K_ANONYMITY_SUPPRESSED)
    result = withhold(OBSERVATIONS, withheld)
    # p_c keeps the hzsf observation (that registration is released); p_d is gone entirely
    assert sorted(result.frame["value"]) == [1.0, 2.0, 3.0, 4.0]
    assert result.removed_by_rule == {K_ANONYMITY_SUPPRESSED: 3}
    assert result.persons_by_rule == {K_ANONYMITY_SUPPRESSED: 2}
    assert result.rows_in == len(result.frame) + sum(result.removed_by_rule.values())
    assert result.as_metadata()[f"removed[{K_ANONYMITY_SUPPRESSED}]"] == 3


def test_person_level_tables_lose_only_persons_with_no_registration_left() -> None:
    released = _released_without(("p_c", "rvic"), ("p_d", "rvic"))
    withheld = withheld_registrations(PATIENTS, released, K_ANONYMITY_SUPPRESSED)
    registry = pd.DataFrame({"patient_pseudonym": ["p_a", "p_b", "p_c", "p_d"], "consent_status": ["granted"] * 4})
    result = withhold(registry, withheld_persons(withheld, released))
    assert list(result.frame["patient_pseudonym"]) == ["p_a", "p_b", "p_c"]  # p_c is still released at hzsf
    assert result.removed_by_rule == {K_ANONYMITY_SUPPRESSED: 1}


def test_every_declared_rule_is_reported_even_when_nothing_is_withheld() -> None:
    nothing = withheld_registrations(PATIENTS, PATIENTS, K_ANONYMITY_SUPPRESSED)
    result = withhold(OBSERVATIONS, nothing, rules=[K_ANONYMITY_SUPPRESSED])
    assert len(result.frame) == len(OBSERVATIONS)
    assert result.removed_by_rule == {K_ANONYMITY_SUPPRESSED: 0}


@pytest.mark.parametrize("frame", [OBSERVATIONS.iloc[0:0], OBSERVATIONS])
def test_empty_inputs_give_empty_well_typed_outputs(frame: pd.DataFrame) -> None:
    empty_patients = PATIENTS.iloc[0:0]
    withheld = withheld_registrations(empty_patients, empty_patients, K_ANONYMITY_SUPPRESSED)
    assert withheld.empty and list(withheld.columns) == WITHHELD_COLUMNS
    result = withhold(frame, withheld, rules=[K_ANONYMITY_SUPPRESSED])
    assert list(result.frame.columns) == list(frame.columns) and len(result.frame) == len(frame)


def test_a_frame_without_pseudonyms_is_refused() -> None:
    with pytest.raises(ValueError, match="patient_pseudonym"):
        withhold(OBSERVATIONS.drop(columns="patient_pseudonym"), withheld_registrations(PATIENTS, PATIENTS, "x"))


def test_recoding_then_propagation_leaves_no_row_pointing_at_a_missing_person() -> None:
    """What the 200-patient hospital did: a lone registration is suppressed; its records must follow it."""
    patients = pd.DataFrame(
        {
            "patient_pseudonym": [f"p_{i}" for i in range(11)],
            "institution": ["hzsf"] * 10 + ["jhsq"],  # jhsq holds one person: no recoding makes it k=5
            "sex": ["female"] * 5 + ["male"] * 5 + ["female"],
        }
    )
    observations = patients.loc[patients.index.repeat(2), ["patient_pseudonym", "institution"]].assign(value=1.0)
    recoded = recode_to_k(patients, ["institution", "sex"], 5, [RecodingStep("sex", "suppress", suppress_value)])
    assert recoded.rows_suppressed == 1
    withheld = withheld_registrations(patients, recoded.frame, K_ANONYMITY_SUPPRESSED)
    result = withhold(observations, withheld, rules=[K_ANONYMITY_SUPPRESSED])
    assert set(result.frame["patient_pseudonym"]) <= set(recoded.frame["patient_pseudonym"])
    assert result.removed_by_rule == {K_ANONYMITY_SUPPRESSED: 2}
