"""Consent withdrawal reaches every derived frame and flags models for retraining."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.deidentify.withdrawal import (
    filter_to_consented,
    load_memberships,
    models_needing_retraining,
    save_membership,
    withdrawn_pseudonyms,
)


def p(n: int) -> str:
    return f"p_{n:024x}"


REGISTRY = pd.DataFrame(
    {
        "patient_pseudonym": [p(1), p(2), p(3), p(4), p(5)],
        "consent_status": ["granted", "withdrawn", "granted", "refused", "withdrawn"],
    }
)


def test_withdrawn_persons_are_found() -> None:
    assert withdrawn_pseudonyms(REGISTRY) == {p(2), p(5)}


def test_derived_frames_keep_only_currently_consented_persons() -> None:
    features = pd.DataFrame(
        {"patient_pseudonym": [p(1), p(2), p(2), p(3), p(4), p(6), None], "hba1c": [6.1, 7.0, 7.2, 5.4, 6.6, 5.9, 6.0]}
    )
    result = filter_to_consented(features, REGISTRY)
    assert result.frame["patient_pseudonym"].tolist() == [p(1), p(3)]
    assert result.frame["hba1c"].tolist() == [6.1, 5.4]
    assert (result.rows_in, result.rows_removed, result.persons_removed) == (7, 5, 4)
    assert result.removed_by_status == {"withdrawn": 1, "refused": 1, "unknown": 2}
    assert result.as_metadata()["consent_removed[withdrawn]"] == 1


def test_models_trained_on_withdrawn_persons_need_retraining() -> None:
    membership = {
        "ds-2026-10": [p(1), p(2), p(3)],  # p(2) has withdrawn since
        "ds-2026-11": [p(1), p(3)],  # clean
        "ds-2026-09": [p(1), p(4), p(5)],  # p(5) withdrawn, p(4) refused
    }
    trained_on = {"t2d_risk/3": "ds-2026-10", "t2d_risk/4": "ds-2026-11", "t2d_risk/2": "ds-2026-09",
                  "t2d_risk/1": "ds-2026-01"}
    needs = models_needing_retraining(REGISTRY, membership, trained_on)
    assert [(n.model_version, n.dataset_version, n.withdrawn, n.not_consented) for n in needs] == [
        ("t2d_risk/1", "ds-2026-01", -1, -1),  # no membership record: cannot be shown clean
        ("t2d_risk/2", "ds-2026-09", 1, 2),
        ("t2d_risk/3", "ds-2026-10", 1, 1),
    ]


def test_membership_files_round_trip_and_are_immutable(tmp_path: Path) -> None:
    save_membership(tmp_path, "ds-2026-10", [p(3), p(1), p(1)])
    save_membership(tmp_path, "ds-2026-10", [p(1), p(3)])  # same members: idempotent
    with pytest.raises(ValueError, match="already recorded"):
        save_membership(tmp_path, "ds-2026-10", [p(1)])
    assert load_memberships(tmp_path) == {"ds-2026-10": frozenset({p(1), p(3)})}
    path = tmp_path / "ds-2026-10.json"
    path.write_text(path.read_text().replace(p(3), p(9)))
    with pytest.raises(ValueError, match="digest"):
        load_memberships(tmp_path)


def test_duplicate_registry_rows_are_an_error() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        filter_to_consented(pd.DataFrame({"patient_pseudonym": [p(1)]}), pd.concat([REGISTRY, REGISTRY.head(1)]))
