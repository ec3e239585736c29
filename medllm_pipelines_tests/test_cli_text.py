"""``medllm deidentify-text``: spans into the input, placeholders without Vault, keyed surrogates with it."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medllm_pipelines import cli_text
from medllm_pipelines.cli import main

RECORDS = [
    {"id": "a", "text": "Pt seen by Dr. Kowalski on 3/14; wife Mary at bedside. SSN 123-45-6789.", "patient": "p1"},
    {"id": "b", "text": "老伴儿王秀英说他去年十月在北京协和医院住院，住院号ZY2023001234。", "language": "zh", "patient": "p1"},
    {"id": "c", "text": "Follow-up with Dr. Kowalski next Tuesday.", "patient": "p2"},
    {"id": "d", "text": "No identifier here: heparin drip, cardiac diet."},
]


class FakeVault:
    """Stands in for the Vault resource: the same HMAC interface, a local key."""

    def hmac_many(self, values: list[str]) -> list[str]:
        return [hmac.new(b"test-key", v.encode(), hashlib.sha256).hexdigest() for v in values]


@pytest.fixture()
def records_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDLLM_HOME", str(tmp_path / "home"))  # an empty home: no OpenBao, no tagger
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def _run(args: list[str]) -> tuple[list[dict], str]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()], result.stderr


def test_spans_only_offsets_point_into_the_input(records_file: Path, tmp_path: Path) -> None:
    rows, stderr = _run(["deidentify-text", "--in", str(records_file), "--out", str(tmp_path / "o.jsonl"),
                         "--spans-only"])
    assert "patterns only" in stderr
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    for row, record in zip(rows, RECORDS, strict=True):
        assert row["text"] == record["text"]
        values = {(record["text"][s["start"]:s["end"]], s["label"]) for s in row["spans"]}
        if record["id"] == "a":
            assert {("Kowalski", "NAME"), ("Mary", "NAME"), ("3/14", "DATE"), ("123-45-6789", "ID_NUMBER")} <= values
        if record["id"] == "b":
            assert {("王秀英", "NAME"), ("去年十月", "DATE"), ("北京协和医院", "LOCATION"), ("ZY2023001234", "MRN")} <= values
        if record["id"] == "d":
            assert values == set()


def test_without_vault_identifiers_become_typed_placeholders(records_file: Path, tmp_path: Path) -> None:
    rows, stderr = _run(["deidentify-text", "--in", str(records_file), "--out", str(tmp_path / "o.jsonl")])
    assert "placeholders" in stderr
    assert rows[0]["text"] == "Pt seen by Dr. [NAME] on [DATE]; wife [NAME] at bedside. SSN [ID_NUMBER]."
    assert "王秀英" not in rows[1]["text"] and "[NAME]" in rows[1]["text"]


def test_with_vault_surrogates_are_consistent_per_patient(records_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_text, "_vault", lambda settings: FakeVault())
    monkeypatch.setattr(cli_text, "_tagger", lambda settings, vault: None)
    rows, stderr = _run(["deidentify-text", "--in", str(records_file), "--out", str(tmp_path / "o.jsonl")])
    assert "placeholders" not in stderr
    first, third = rows[0]["text"], rows[2]["text"]
    assert "Kowalski" not in first and "Kowalski" not in third and "[NAME]" not in first
    assert "123-45-6789" not in first and "3/14" not in first
    # the same surname gets a surrogate per patient scope: p1 and p2 are not linkable through it
    surrogate_p1 = first[len("Pt seen by Dr. "):].split(" ")[0]
    surrogate_p2 = third[len("Follow-up with Dr. "):].split(" ")[0]
    assert surrogate_p1.isalpha() and surrogate_p2.isalpha() and surrogate_p1 != surrogate_p2
    assert rows[0]["spans"][0]["start"] == len("Pt seen by Dr. ")  # offsets into the input, not the output
    assert "[DATE]" in rows[1]["text"]  # 去年十月 cannot be shifted: a typed placeholder
    assert rows[3]["text"] == RECORDS[3]["text"]
