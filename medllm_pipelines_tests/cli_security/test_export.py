"""`medllm export`: refused without an agreement or k-anonymity; otherwise written encrypted and audited."""

from __future__ import annotations

import io

import pandas as pd

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.envelope import MAGIC, read_header
from medllm_pipelines.lib.security.vault_client import DEFAULT_EXPORT_KEY_NAME
from medllm_pipelines_tests.cli_security.world import (
    AGREEMENT,
    DATASET,
    DEID,
    DENIED,
    LINKED,
    RECIPIENT,
    World,
    export_as_engineer,
    name_of,
    read_export,
)


def test_export_is_refused_without_an_agreement(world: World) -> None:
    engineer = name_of("data_engineer")
    out = world.home / "exports" / "refused.parquet.enc"
    result = world.cli("export", DATASET, "--recipient", "Unknown-Org", "--agreement", "dsa-none", "--out", str(out),
                       "--as", engineer, "--totp", world.code(engineer))
    assert result.exit_code == DENIED and "no data-sharing agreement" in result.stderr
    assert not out.exists()
    entry = world.entries()[-1]
    assert (entry.action, entry.outcome) == ("export_dataset", "failed")


def test_export_of_a_table_that_is_not_k_anonymous_is_refused(world: World) -> None:
    rare = DEID.assign(age_band=["40-49"] * 9 + ["90+"])  # one person alone in the 90+ band
    warehouse = Warehouse(f"duckdb:///{world.home / 'warehouse' / 'medllm.duckdb'}")
    try:
        warehouse.write_table("deidentify", "rare_patients", rare)
    finally:
        warehouse.dispose()
    officer, engineer = name_of("privacy_officer"), name_of("data_engineer")
    assert world.cli("governance", "agree", "--id", "dsa-rare", "--recipient", RECIPIENT, "--purpose", "benchmark",
                     "--dataset", "deidentify.rare_patients", "--valid-until", "2099-12-31",
                     "--as", officer).exit_code == 0
    out = world.home / "exports" / "rare.parquet.enc"
    result = world.cli("export", "deidentify.rare_patients", "--recipient", RECIPIENT, "--agreement", "dsa-rare",
                       "--out", str(out), "--as", engineer, "--totp", world.code(engineer))
    assert result.exit_code == DENIED and "not 5-anonymous on age_band" in result.stderr
    assert "90+" not in result.stderr and not out.exists()
    entry = world.entries()[-1]
    assert (entry.action, entry.outcome) == ("export_dataset", "failed")


def test_export_under_an_agreement_is_written_encrypted(world: World) -> None:
    out = export_as_engineer(world, "partner.parquet.enc")
    blob = out.read_bytes()
    assert blob.startswith(MAGIC) and LINKED.encode() not in blob
    assert read_header(io.BytesIO(blob)).key_ref == f"transit/{DEFAULT_EXPORT_KEY_NAME}"
    pd.testing.assert_frame_equal(read_export(world, out), DEID)
    entry = world.entries()[-1]
    assert (entry.action, entry.outcome, entry.details["agreement_id"]) == ("export_dataset", "succeeded", AGREEMENT)
    screens = [e for e in world.entries() if e.action == "raw_zone.read" and e.resource == "ingest_patients"]
    assert screens, "the identifier screen's raw-zone read is audited"
