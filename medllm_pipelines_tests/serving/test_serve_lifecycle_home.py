"""`medllm serve` on the home of a whole lifecycle run: the models its gates promoted, all four scenarios."""

from __future__ import annotations

from collections.abc import Iterator


import pytest

from medllm_pipelines.defs.resources import vault_resource
from medllm_pipelines.lib.security.home_scan import load_identity_needles
from medllm_pipelines.lib.train.registry import list_registered
from medllm_pipelines_tests.conftest_lifecycle import LifecycleRun, scoped_env
from medllm_pipelines_tests.lib.scenarios.test_diagnosis_assessor import LOINC_ROWS, bundle
from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import disc_instance
from medllm_pipelines_tests.serving.conftest import Service, start_service


@pytest.fixture(scope="module")
def lifecycle_service(embedded_run: LifecycleRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with scoped_env(embedded_run.env):
        keys = vault_resource(embedded_run.settings).key_service()
        # The run's own home: its registry, model store and raw zone (the leak scan's identifiers).
        yield from start_service(embedded_run.settings.home, keys, {**embedded_run.env,
                                                                    "MEDLLM_SERVE_RATE_LIMIT_PER_MINUTE": "100000"})


def _champions(run: LifecycleRun) -> dict[str, str]:
    return {e.name: e.version for e in list_registered(run.settings.mlflow_tracking_uri) if "champion" in e.aliases}


def test_the_service_serves_exactly_the_champions(lifecycle_service: Service, embedded_run: LifecycleRun) -> None:
    ready = lifecycle_service.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    served = {name: model["version"] for name, model in ready.json()["models"].items() if model}
    champions = _champions(embedded_run)
    assert served == {name: version for name, version in champions.items() if name in ready.json()["models"]}
    status = lifecycle_service.client.get("/v1/models", headers=lifecycle_service.headers()).json()["models"]
    for name, entry in status.items():
        if entry["served"] is None:  # a model whose gate failed says why instead
            assert "champion" in entry["problem"] or "no version" in entry["problem"], entry


def test_all_four_scenarios_answer(lifecycle_service: Service, embedded_run: LifecycleRun,
                                   caplog: pytest.LogCaptureFixture) -> None:
    client, headers = lifecycle_service.client, lifecycle_service.headers()
    triage = client.post("/v1/triage/sessions", json={"language": "en", "message": "My knee hurts after a fall"},
                         headers=headers)
    assert triage.status_code == 201, triage.text
    draft = client.post("/v1/ehr/drafts", json={"text": "Patient: I have had heartburn after meals for a month.\n"
                                                        "Doctor: Likely reflux; start omeprazole."}, headers=headers)
    assert draft.status_code == 201, draft.text
    study = client.post("/v1/imaging/studies", files=[("files", ("a.dcm", disc_instance("CT"), "application/dicom"))],
                        headers=headers)
    champions = _champions(embedded_run)
    if {"lesion_classifier", "lesion_segmentation"} & set(champions):
        assert study.status_code == 201, (study.text, [r.__dict__.get("fields") for r in caplog.records])
    else:
        assert study.status_code == 503 and study.json()["reason"] == "model_unavailable"
    risk = client.post("/v1/diagnosis/risk", json=bundle(LOINC_ROWS), headers=headers)
    if "t2d_risk" in champions:
        assert risk.status_code == 200, risk.text
    else:  # the gate kept it back: the service says so rather than serving an unpromoted model
        assert risk.status_code == 503 and risk.json()["reason"] == "model_unavailable"


def test_a_raw_zone_identity_never_comes_back_in_a_draft(lifecycle_service: Service,
                                                         embedded_run: LifecycleRun) -> None:
    needles = load_identity_needles(embedded_run.hospital.identities)
    mrn = min(needles["mrn"])
    name = min(n for n in needles.get("name", set()) if " " in n) if needles.get("name") else "Nobody Known"
    text = f"Dictation for {name}, record {mrn}: two days of sore throat and fever. Plan: rest and fluids."
    response = lifecycle_service.client.post("/v1/ehr/drafts", json={"text": text, "source": "dictation"},
                                             headers=lifecycle_service.headers())
    assert response.status_code in (201, 422), response.text
    assert mrn not in response.text and name not in response.text
    if response.status_code == 422:
        assert response.json()["reason"] == "draft_leaks_identifier"


