"""The one parsed-feed type: batches add up, warnings are counted by code, removals include re-sent copies."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.common.records import QuarantineRecord, ReconciliationError
from medllm_pipelines.lib.ingest.feed import RULE_OUT_OF_SCOPE, RULE_RESENT, FeedWarning, ParsedFeed


def held(position: int) -> QuarantineRecord:
    return QuarantineRecord("ingest", "ingest/x", "h1", "a" * 64, position, "Patient", "invalid_resource", "why")


def test_batches_add_up_and_still_reconcile():
    first = ParsedFeed(resources_seen=3, out_of_scope=1, quarantine=[held(0)], events={"erasure_request": 1})
    first.rows["patients"].append({"mrn": "m1"})
    second = ParsedFeed(resources_seen=2, resent=1, messages_read=1)
    second.rows["patients"].append({"mrn": "m2"})
    second.add_warnings([FeedWarning(0, "ADT^A01", "z_segment", "segment 4 (ZPI) is site-defined")])

    first.extend(second)

    assert (first.resources_seen, first.records_out, len(first.quarantine), first.messages_read) == (5, 2, 1, 1)
    assert first.removals() == {RULE_OUT_OF_SCOPE: 1, RULE_RESENT: 1}
    assert first.warnings_by_code == {"z_segment": 1} and len(first.warnings) == 1
    assert first.events == {"erasure_request": 1}
    assert first.reconciliation().balanced


def test_a_lost_entry_does_not_reconcile():
    with pytest.raises(ReconciliationError):
        ParsedFeed(resources_seen=1).reconciliation()
