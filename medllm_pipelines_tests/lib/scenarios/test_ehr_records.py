"""Scenario A2 end to end with the document store: a drafted note stored, edited into a new version with a diff,
signed and frozen, its text nowhere in the database file."""

from __future__ import annotations

from pathlib import Path

import pytest

from medllm_pipelines.lib.scenarios.ehr import NoteDrafter
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.store import DocumentStore
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider

DIALOGUE = ("Doctor: What brings you in today?\nPatient: I've had a burning pain in my stomach for two weeks.\n"
            "Doctor: Any black stools?\nPatient: No black stools.\n"
            "Doctor: There is epigastric tenderness on palpation. This looks like gastritis. "
            "I'll start you on omeprazole 20 mg twice daily.\nDoctor: Next steps: gastroscopy and avoid alcohol.")
PLANTED = "Persimmon-Oolong-8812 epigastric note"


def test_a_note_is_stored_versioned_signed_and_sealed(tmp_path: Path) -> None:
    path = tmp_path / "ehr.db"
    store = DocumentStore(f"sqlite:///{path}", LocalTestKeyProvider())
    drafter = NoteDrafter(None)
    draft = drafter.draft(DIALOGUE, patient_ref="pseudo-42")
    assert draft["fields"]["assessment"] == ["gastritis (K29.7)"] and draft["fields"]["medications"]
    stored = store.create("ehr_note", draft, author="dr.li")

    edited = drafter.edit(stored.document, {"history": [PLANTED]})
    second = store.update("ehr_note", stored.doc_id, edited, author="dr.li", expected_version=1)
    signed = drafter.sign(second.document, author="dr.li", signed_at="2026-03-01T10:00:00Z")
    final = store.sign("ehr_note", stored.doc_id, author="dr.li", document=signed, expected_version=2)
    assert final.version == 3 and final.document["composition"]["status"] == "final"

    history = store.versions("ehr_note", stored.doc_id)
    assert [v.version for v in history] == [1, 2, 3] and history[0].document == draft
    assert f'+      "{PLANTED}"' in (history[1].diff or "")
    assert '-    "status": "preliminary",' in (history[2].diff or "")
    with pytest.raises(ScenarioInputError, match="note_signed"):
        store.update("ehr_note", stored.doc_id, edited, author="dr.wang")
    with pytest.raises(ScenarioInputError, match="note_signed"):
        drafter.edit(store.get("ehr_note", stored.doc_id).document, {"plan": ["x"]})
    store.close()
    raw = path.read_bytes()
    for fragment in ("Persimmon-Oolong-8812", "gastritis", "omeprazole", "pseudo-42"):
        assert fragment.encode() not in raw
