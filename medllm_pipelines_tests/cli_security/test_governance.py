"""`medllm governance agree`: the privacy officer records a sharing agreement."""

from __future__ import annotations

from medllm_pipelines.lib.security.governance import GovernanceStore
from medllm_pipelines_tests.cli_security.world import DATASET, World, name_of


def test_governance_agree_records_an_agreement_for_the_privacy_officer(world: World) -> None:
    officer = name_of("privacy_officer")
    result = world.cli("governance", "agree", "--id", "dsa-uni-2027", "--recipient", "Uni-Hospital", "--purpose",
                       "benchmark", "--dataset", DATASET, "--valid-until", "2027-12-31", "--as", officer)
    assert result.exit_code == 0, result.output
    assert GovernanceStore(world.home / "governance").agreement("dsa-uni-2027").recorded_by == officer
