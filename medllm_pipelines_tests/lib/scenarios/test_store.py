"""The document store: versions kept with diffs, signed documents frozen, racing writers refused, nothing readable
at rest, rows that cannot be swapped; on the embedded SQLite default and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text, update

from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.store import DocumentStore, documents_table
from medllm_pipelines.lib.security.errors import EnvelopeIntegrityError
from medllm_pipelines_tests.lib.security.fakes import LocalTestKeyProvider
from medllm_pipelines_tests.postgres import throwaway_database

PLANTED = "Zebrafinch-Quokka-4471 reports 胸闷气短 since Tuesday"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    keys = LocalTestKeyProvider()
    if request.param == "sqlite":
        opened = DocumentStore(f"sqlite:///{tmp_path / 'documents.db'}", keys)
        yield opened
        opened.close()
    else:
        with throwaway_database("docstore") as url:
            opened = DocumentStore(url, keys)
            yield opened
            opened.close()


def test_versions_are_kept_with_their_authors_and_diffs(store: DocumentStore) -> None:
    first = store.create("ehr_note", {"text": "Cough for 3 days", "fields": {"plan": []}}, author="dr.li")
    assert (first.version, first.author, first.signed, first.diff) == (1, "dr.li", False, None)
    second = store.update("ehr_note", first.doc_id, {"text": "Cough for 5 days", "fields": {"plan": ["chest X-ray"]}},
                          author="dr.wang", expected_version=1)
    assert second.version == 2 and store.get("ehr_note", first.doc_id).document["text"] == "Cough for 5 days"

    history = store.versions("ehr_note", first.doc_id)
    assert [(v.version, v.author) for v in history] == [(1, "dr.li"), (2, "dr.wang")]
    assert history[0].document["text"] == "Cough for 3 days"  # the old version is still readable
    diff = history[1].diff or ""
    assert '-  "text": "Cough for 3 days"' in diff and '+  "text": "Cough for 5 days"' in diff
    assert '+      "chest X-ray"' in diff and f"ehr_note/{first.doc_id}@v1" in diff
    assert all(v.created_at.endswith("Z") for v in history) and history[0].created_at <= history[1].created_at


def test_a_signed_document_cannot_change_or_be_signed_again(store: DocumentStore) -> None:
    doc = store.create("ehr_note", {"text": "draft"}, author="dr.li", doc_id="note-1")
    signed = store.sign("ehr_note", "note-1", author="dr.li", document={"text": "final text", "status": "final"})
    assert (signed.version, signed.signed, signed.signed_by) == (2, True, "dr.li") and signed.signed_at
    for attempt in (lambda: store.update("ehr_note", doc.doc_id, {"text": "changed"}, author="dr.wang"),
                    lambda: store.sign("ehr_note", doc.doc_id, author="dr.wang")):
        with pytest.raises(ScenarioInputError) as refused:
            attempt()
        assert (refused.value.reason, refused.value.status) == ("note_signed", 409)
    latest = store.get("ehr_note", "note-1")
    assert latest.signed and latest.document == {"text": "final text", "status": "final"}
    assert [v.signed for v in store.versions("ehr_note", "note-1")] == [False, True]


def test_a_stale_writer_gets_a_version_conflict_and_unknown_ids_are_404(store: DocumentStore) -> None:
    doc = store.create("triage_session", {"step": 1}, author="nurse.a")
    store.update("triage_session", doc.doc_id, {"step": 2}, author="nurse.b", expected_version=1)
    with pytest.raises(ScenarioInputError) as stale:
        store.update("triage_session", doc.doc_id, {"step": 3}, author="nurse.a", expected_version=1)
    assert (stale.value.reason, stale.value.status) == ("version_conflict", 409)
    with pytest.raises(ScenarioInputError) as missing:
        store.get("triage_session", "no-such-document")
    assert (missing.value.reason, missing.value.status) == ("not_found", 404)
    with pytest.raises(ScenarioInputError) as taken:
        store.create("triage_session", {"step": 1}, author="nurse.a", doc_id=doc.doc_id)
    assert (taken.value.reason, taken.value.status) == ("document_exists", 409)
    with pytest.raises(ScenarioInputError) as missing_kind:
        store.get("imaging_result", doc.doc_id)  # the same id under another kind is another document
    assert missing_kind.value.reason == "not_found"


def test_racing_writers_never_share_a_version(store: DocumentStore) -> None:
    doc = store.create("feedback", {"n": 0}, author="svc")
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def writer(worker: int) -> None:
        start.wait()
        for attempt in range(4):
            try:
                store.update("feedback", doc.doc_id, {"n": worker * 10 + attempt}, author=f"w{worker}")
                result = "ok"
            except ScenarioInputError as exc:
                result = exc.reason
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(outcomes) <= {"ok", "version_conflict"} and len(outcomes) == 24
    versions = [v.version for v in store.versions("feedback", doc.doc_id)]
    assert versions == list(range(1, 2 + outcomes.count("ok")))  # no gap, no duplicate, one per success


@pytest.mark.parametrize(("call", "reason"), [
    (lambda s: s.create("Bad Kind", {}, author="a"), "invalid_document_kind"),
    (lambda s: s.create("ehr_note", {}, author="a", doc_id="../etc/passwd"), "invalid_document_id"),
    (lambda s: s.create("ehr_note", {}, author=" "), "invalid_author"),
    (lambda s: s.create("ehr_note", ["not", "an", "object"], author="a"), "invalid_document"),
    (lambda s: s.create("ehr_note", {"when": object()}, author="a"), "invalid_document"),
    (lambda s: s.create("ehr_note", {"blob": "x" * (5 * 1024 * 1024)}, author="a"), "document_too_large"),
])
def test_bad_input_is_refused_with_a_reason(tmp_path: Path, call, reason: str) -> None:
    store = DocumentStore(f"sqlite:///{tmp_path / 'd.db'}", LocalTestKeyProvider())
    with pytest.raises(ScenarioInputError) as refused:
        call(store)
    assert refused.value.reason == reason


def test_nothing_of_a_document_is_readable_in_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "documents.db"
    store = DocumentStore(f"sqlite:///{path}", LocalTestKeyProvider())
    doc = store.create("ehr_note", {"text": PLANTED, "fields": {"history": [PLANTED]}}, author="dr.li")
    store.update("ehr_note", doc.doc_id, {"text": PLANTED + " (edited)"}, author="dr.li")
    store.close()
    raw = path.read_bytes()
    for fragment in ("Zebrafinch-Quokka-4471", "胸闷气短", "Tuesday", "fields"):
        assert fragment.encode("utf-8") not in raw
    assert b"dr.li" in raw and doc.doc_id.encode() in raw  # ids and authors are the clear-text columns


def test_a_row_copied_onto_another_fails_authentication(tmp_path: Path) -> None:
    store = DocumentStore(f"sqlite:///{tmp_path / 'd.db'}", LocalTestKeyProvider())
    a = store.create("ehr_note", {"text": "note of A"}, author="x", doc_id="a")
    store.create("ehr_note", {"text": "note of B"}, author="x", doc_id="b")
    store.update("ehr_note", "a", {"text": "note of A v2"}, author="x")
    t = documents_table
    with store.engine.begin() as conn:
        sealed_a1 = conn.execute(text("SELECT sealed FROM scenario_documents WHERE doc_id='a' AND version=1")).scalar()
        conn.execute(update(t).where(t.c.doc_id == "b").values(sealed=sealed_a1))  # another document
        conn.execute(update(t).where(t.c.doc_id == "a", t.c.version == 2).values(sealed=sealed_a1))  # older version
    for doc_id in ("a", "b"):
        with pytest.raises(EnvelopeIntegrityError):
            store.get("ehr_note", doc_id)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM scenario_documents WHERE doc_id='a' AND version=2"))
    assert store.get("ehr_note", a.doc_id).document == {"text": "note of A"}


def test_another_key_cannot_read_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    doc = DocumentStore(url, LocalTestKeyProvider("test/kek-a")).create("ehr_note", {"text": "x"}, author="a")
    with pytest.raises(EnvelopeIntegrityError):
        DocumentStore(url, LocalTestKeyProvider("test/kek-a")).get("ehr_note", doc.doc_id)  # same name, other key


def test_the_latest_version_of_every_document_of_a_kind(tmp_path, transit_service) -> None:
    from medllm_pipelines.lib.scenarios.store import DocumentStore

    store = DocumentStore(f"sqlite:///{tmp_path / 'latest.sqlite'}", transit_service)
    first = store.create("feedback", {"n": 1}, author="alice")
    store.update("feedback", first.doc_id, {"n": 2}, author="alice")
    store.create("feedback", {"n": 3}, author="bob")
    store.create("ehr_note", {"n": 4}, author="bob")
    store.ping()
    latest = store.latest_documents("feedback")
    assert sorted(d.document["n"] for d in latest) == [2, 3] and all(d.kind == "feedback" for d in latest)
