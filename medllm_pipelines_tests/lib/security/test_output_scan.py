"""The run-wide leak scan's matcher and its walk over MLflow and folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from medllm_pipelines.lib.security.leak_scan import scan_text
from medllm_pipelines.lib.security.output_scan import (
    IdentifierMatcher,
    ScanTally,
    files_under,
    mlflow_items,
    scan_items,
)

NEEDLES = {
    "name_zh": {"张伟"},
    "name_en": {"Alice Walker"},
    "mrn": {"00123456"},
    "phone": {"13812345678"},
    "resident_id": {"11010519491231002X"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("病人张伟，男", {"name_zh": 1}),
        ("seen by Alice Walker; call 13812345678", {"name_en": 1, "phone": 1}),
        ("mrn=00123456\nmrn=00123456", {"mrn": 2}),
        ("13812345678.0 read back from a float column", {"phone": 1}),
        ("checksum 9913812345678 and 0.00123456 are other numbers", {}),
        ("ID 11010519491231002X in a comment", {"resident_id": 1}),
        ("nothing identifying here", {}),
    ],
)
def test_matcher_counts_like_the_substring_scan(text: str, expected: dict[str, int]) -> None:
    matcher = IdentifierMatcher(NEEDLES)
    assert dict(matcher.count(text)) == expected
    assert {h.identifier_kind: h.count for h in scan_text(text, NEEDLES, "x")} == expected  # same rules as before


def test_matcher_finds_utf8_identifiers_inside_binary_data() -> None:
    blob = b"\x00\x89PNG\xff" + "张伟".encode() + b"\x00\x01" + b"13812345678" + b"\xfe"
    assert dict(IdentifierMatcher(NEEDLES).count(blob)) == {"name_zh": 1, "phone": 1}


def test_mask_hides_every_identifier_in_the_context() -> None:
    matcher = IdentifierMatcher(NEEDLES)
    context = matcher.mask("note: 张伟 phone 13812345678 end".encode())
    assert "张伟" not in context and "13812345678" not in context
    assert "<name_zh>" in context and "<phone>" in context


def test_an_identifier_of_two_kinds_counts_for_both() -> None:
    matcher = IdentifierMatcher({"mrn": {"55501234"}, "phone": {"55501234"}})
    assert dict(matcher.count("x 55501234 y")) == {"mrn": 1, "phone": 1}


def test_scan_items_reports_location_kind_and_count_never_the_value(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "ok.json").write_text('{"auc": 0.87}')
    (tmp_path / "reports" / "bad.html").write_text("<td>Alice Walker</td>")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "secret.txt").write_text("Alice Walker")
    tally = ScanTally()
    hits = scan_items(files_under([tmp_path], exclude=[tmp_path / "raw"]), IdentifierMatcher(NEEDLES), tally)
    assert [(h.location, h.identifier_kind, h.count) for h in hits] == [(f"{tmp_path.name}/reports/bad.html", "name_en", 1)]
    assert "Alice Walker" not in repr(hits)
    assert tally.items["file"] == 2  # the excluded subtree is not read


def test_mlflow_walk_covers_params_tags_names_and_artifacts(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("medllm/canary", artifact_location=(tmp_path / "artifacts").as_uri())
    clean = client.create_run(experiment, run_name="clean")
    client.log_param(clean.info.run_id, "lr", "0.01")
    leaky = client.create_run(experiment, run_name="leaky", tags={"owner_note": "asked by 张伟"})
    client.log_param(leaky.info.run_id, "cohort_filter", "phone=13812345678")
    report = tmp_path / "report.txt"
    report.write_text("patient Alice Walker improved")
    client.log_artifact(leaky.info.run_id, str(report), artifact_path="report")
    other = client.create_experiment("elsewhere", artifact_location=(tmp_path / "other").as_uri())
    client.log_param(client.create_run(other).info.run_id, "x", "Alice Walker")  # outside the prefix

    tally = ScanTally()
    hits = scan_items(mlflow_items(uri, experiment_prefix="medllm"), IdentifierMatcher(NEEDLES), tally)
    found = {(h.location.rsplit("/", 1)[-1] if "artifacts" not in h.location else "artifact", h.identifier_kind)
             for h in hits}
    assert found == {("params", "phone"), ("tags", "name_zh"), ("artifact", "name_en")}
    assert all(leaky.info.run_id in h.location for h in hits)
    assert tally.items["mlflow_params"] == 2 and tally.items["mlflow_artifact"] == 1
