"""The export workflow: its gates run in order and refuse before anything is read or written."""

from __future__ import annotations

import datetime as dt
import io
import stat
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines.lib.security.envelope import decrypt_file_bytes, is_envelope
from medllm_pipelines.lib.security.exports import (
    ExportRequest,
    export_audit_details,
    export_dataset,
    export_warehouse_table,
    exported_files,
    record_export,
    require_k_anonymous,
)
from medllm_pipelines.lib.security.governance import (
    ExportRefused,
    GovernanceError,
    GovernanceStore,
    SharingAgreement,
    SharingAgreementError,
)
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

TODAY = dt.date(2026, 11, 28)
AGREEMENT = SharingAgreement(id="DSA-2026-003", recipient="hust-ai-lab", purpose="external validation",
                             datasets=("curate/diabetes_features",), cross_border=False,
                             valid_until=dt.date(2027, 6, 30), version=1)
FEATURES = pd.DataFrame({"patient_pseudonym": ["p_" + "a" * 24, "p_" + "b" * 24], "age_band": ["50-54", "60-64"],
                         "hba1c": [6.1, 7.4]})
FIVE_ANONYMOUS = pd.DataFrame({"patient_pseudonym": [f"p{n}" for n in range(10)],
                               "age_band": ["40-49"] * 5 + ["60-69"] * 5})


@pytest.fixture
def world(tmp_path: Path) -> dict[str, object]:
    warehouse_url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    warehouse = Warehouse(warehouse_url)
    try:
        warehouse.write_table("deidentify", "patients", FIVE_ANONYMOUS)
        warehouse.write_table("deidentify", "rare", FIVE_ANONYMOUS.assign(age_band=["40-49"] * 9 + ["90+"]))
    finally:
        warehouse.dispose()
    GovernanceStore(tmp_path / "governance").record_agreement(
        SharingAgreement(id="dsa-1", recipient="Lab", purpose="validation",
                         datasets=("deidentify.patients", "deidentify.rare", "deidentify.absent"),
                         cross_border=False, valid_until=dt.date(2030, 1, 1)),
        recorded_by="privacy-officer")
    return {"governance_dir": tmp_path / "governance", "warehouse_url": warehouse_url, "k": 5, "purpose": None}


def _request(tmp_path: Path, dataset: str, recipient: str = "Lab") -> ExportRequest:
    return ExportRequest(dataset, recipient, "dsa-1", tmp_path / "out" / f"{dataset}.enc", False, TODAY)


def test_an_export_is_written_encrypted_and_its_audit_details_carry_no_value(world: dict, tmp_path: Path) -> None:
    keys = LocalTestKeyProvider("transit/medllm-export")
    request = _request(tmp_path, "deidentify.patients")

    receipt = export_warehouse_table(request, keys=keys, needles=lambda: {"mrn": {"HZ00412345"}}, **world)

    blob = decrypt_file_bytes(receipt.path, keys, aad=receipt.aad.encode())
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(blob)), FIVE_ANONYMOUS)
    assert stat.S_IMODE(receipt.path.stat().st_mode) == 0o600
    details = export_audit_details(receipt)
    assert details["rows"] == 10 and details["agreement_id"] == "dsa-1" and details["key_ref"] == keys.key_ref
    assert "p0" not in str(details)


@pytest.mark.parametrize(("dataset", "recipient", "error", "why"), [
    ("deidentify.patients", "Other-Lab", GovernanceError, "no data-sharing agreement"),
    ("deidentify.absent", "Lab", GovernanceError, "no warehouse table"),
    ("deidentify.rare", "Lab", ExportRefused, "not 5-anonymous on age_band"),
])
def test_refusals_come_before_the_audited_identifier_screen_and_write_nothing(
    world: dict, tmp_path: Path, dataset: str, recipient: str, error: type[Exception], why: str
) -> None:
    screened: list[bool] = []
    request = _request(tmp_path, dataset, recipient)

    with pytest.raises(error, match=why) as caught:
        export_warehouse_table(request, keys=LocalTestKeyProvider(), needles=lambda: screened.append(True) or {},
                               **world)

    assert not screened, "the raw zone's identifiers are read only once the other gates passed"
    assert not request.out_file.exists() and "90+" not in str(caught.value)


def test_identifier_values_found_by_the_screen_refuse_the_export(world: dict, tmp_path: Path) -> None:
    request = _request(tmp_path, "deidentify.patients")
    with pytest.raises(ExportRefused, match="identifier values"):
        export_warehouse_table(request, keys=LocalTestKeyProvider(), needles=lambda: {"mrn": {"p3"}}, **world)
    assert not request.out_file.exists()


def test_k_anonymity_is_checked_only_on_declared_quasi_identifiers() -> None:
    require_k_anonymous(FIVE_ANONYMOUS, "deidentify.patients", 5)
    require_k_anonymous(pd.DataFrame({"note_count": [1]}), "deidentify.notes", 5)  # no quasi-identifier: nothing to check
    with pytest.raises(ExportRefused, match="not 6-anonymous"):
        require_k_anonymous(FIVE_ANONYMOUS, "deidentify.patients", 6)


def test_the_export_index_lists_each_file_once_so_rotation_finds_it(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    elsewhere = tmp_path / "elsewhere" / "x.enc"
    assert exported_files(exports) == []

    record_export(exports, elsewhere)
    record_export(exports, elsewhere)
    record_export(exports, exports / "y.enc")

    assert exported_files(exports) == [elsewhere.resolve(), (exports / "y.enc").resolve()]
    assert stat.S_IMODE((exports / "index.json").stat().st_mode) == 0o600


def test_export_is_encrypted_bound_to_the_agreement_and_has_a_manifest(tmp_path: Path) -> None:
    keys = LocalTestKeyProvider()
    agreement = AGREEMENT
    receipt = export_dataset(FEATURES, tmp_path / "out" / "features.parquet.enc", keys=keys, agreement=agreement,
                             dataset="curate/diabetes_features", today=TODAY)
    blob = receipt.path.read_bytes()
    assert is_envelope(blob) and b"50-54" not in blob and b"p_aaaa" not in blob
    assert oct(receipt.path.stat().st_mode & 0o777) == "0o600"
    plain = decrypt_file_bytes(receipt.path, keys, receipt.aad.encode())
    assert pd.read_parquet(io.BytesIO(plain)).equals(FEATURES)
    assert receipt.rows == 2 and receipt.agreement_id == "DSA-2026-003"
    assert receipt.manifest_path.exists() and "p_aaaa" not in receipt.manifest_path.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "features.parquet.enc", "features.parquet.enc.manifest.json"]  # no plaintext or temp file left


@pytest.mark.parametrize("column", ["mrn", "Name_ZH", "birth_date", "patient_key", "source_path_ciphertext"])
def test_export_refuses_identifiable_columns_and_writes_nothing(tmp_path: Path, column: str) -> None:
    frame = FEATURES.assign(**{column: ["x", "y"]})
    with pytest.raises(ExportRefused, match="identifiable columns"):
        export_dataset(frame, tmp_path / "out" / "x.enc", keys=LocalTestKeyProvider(),
                       agreement=AGREEMENT, dataset="curate/diabetes_features", today=TODAY)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_refuses_identifier_values_in_innocent_columns(tmp_path: Path) -> None:
    frame = FEATURES.assign(comment=["called 13912345678", "ok"])
    with pytest.raises(ExportRefused, match=r"comment \(phone\)"):
        export_dataset(frame, tmp_path / "x.enc", keys=LocalTestKeyProvider(), agreement=AGREEMENT,
                       dataset="curate/diabetes_features", today=TODAY, needles={"phone": {"13912345678"}})
    assert not (tmp_path / "x.enc").exists()


def test_export_refuses_an_agreement_not_in_force(tmp_path: Path) -> None:
    with pytest.raises(SharingAgreementError, match="expired"):
        export_dataset(FEATURES, tmp_path / "x.enc", keys=LocalTestKeyProvider(),
                       agreement=AGREEMENT, dataset="curate/diabetes_features",
                       today=dt.date(2028, 1, 1))
    assert not (tmp_path / "x.enc").exists()
