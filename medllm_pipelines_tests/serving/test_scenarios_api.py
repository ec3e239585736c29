"""A1, A3 and A4 through the API with small real models served from packages; rolling model updates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medllm_pipelines.lib.common import codes
from medllm_pipelines.serving.models import package_model
from medllm_pipelines_tests.lib.scenarios.test_diagnosis_assessor import LOINC_ROWS, PATIENT_MRN, PATIENT_NAME, bundle
from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import PLANTED_NEEDLES, disc_instance
from medllm_pipelines_tests.serving.conftest import Service
from medllm_pipelines_tests.serving.packaged import train_t2d


# ------------------------------------------------------------------------------------------------ A1 triage
def test_a_red_flag_escalates_to_emergency_at_once(served: Service) -> None:
    response = served.client.post("/v1/triage/sessions", json={
        "language": "en", "message": "I have crushing chest pain and I can't catch my breath"}, headers=served.headers())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "escalated" and body["result"]["escalated"]
    assert body["result"]["department"]["name_en"] == "Emergency" and body["result"]["department"]["name_zh"] == "急诊科"
    assert body["result"]["questionnaire_response"]["resourceType"] == "QuestionnaireResponse"
    after = served.client.post(f"/v1/triage/sessions/{body['session_id']}/messages", json={"text": "hello"},
                               headers=served.headers())
    assert after.status_code == 409 and after.json()["reason"] == "session_finished"


def test_a_dialogue_asks_until_it_is_confident_and_keeps_no_identifier(served: Service) -> None:
    headers = served.headers()
    start = served.client.post("/v1/triage/sessions", json={"language": "zh"}, headers=headers).json()
    assert start["status"] == "asking" and start["message"]
    reply = served.client.post(f"/v1/triage/sessions/{start['session_id']}/messages",
                               json={"text": "我叫王小明，最近皮肤很痒，起了很多红疹"}, headers=headers).json()
    turns = 0
    while reply["status"] == "asking" and turns < 6:
        reply = served.client.post(f"/v1/triage/sessions/{start['session_id']}/messages", json={"text": "没有"},
                                   headers=headers).json()
        turns += 1
    assert reply["status"] == "done", reply
    assert reply["result"]["department"]["name_en"] == "Dermatology"
    stored = served.ctx.document_store().get("triage_session", start["session_id"]).document
    assert "王小明" not in json.dumps(stored, ensure_ascii=False)  # de-identified before it was stored


def test_an_empty_message_is_a_problem(served: Service) -> None:
    start = served.client.post("/v1/triage/sessions", json={"language": "en"}, headers=served.headers()).json()
    response = served.client.post(f"/v1/triage/sessions/{start['session_id']}/messages", json={"text": "   "},
                                  headers=served.headers())
    assert response.status_code == 422 and response.json()["reason"] == "empty_message"


# ------------------------------------------------------------------------------------------------ A3 imaging
def _study(uid: str = "1.2.826.0.1.3680043.10.1.77") -> list[bytes]:
    return [disc_instance("CT", study_uid=uid, instance=k) for k in (1, 2)]


def test_a_study_is_analysed_with_overlay_segmentation_and_report(served: Service) -> None:
    headers = served.headers()
    files = [("files", (f"i{k}.dcm", blob, "application/dicom")) for k, blob in enumerate(_study())]
    response = served.client.post("/v1/imaging/studies", files=files, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["instances"]) == 2 and body["diagnostic_report"]["resourceType"] == "DiagnosticReport"
    assert body["study_uid"] != "1.2.826.0.1.3680043.10.1.77"  # the de-identified UID
    assert all(0.0 <= i["lesion_probability"] <= 1.0 for i in body["instances"])
    for needle in PLANTED_NEEDLES:
        assert needle not in response.text
    overlay = served.client.get(body["instances"][0]["overlay_url"], headers=headers)
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    seg = served.client.get(body["segmentation_url"], headers=headers)
    assert seg.status_code == 200
    dataset = pydicom.dcmread(__import__("io").BytesIO(seg.content))
    assert dataset.Modality == "SEG"
    assert not any(needle.encode() in seg.content for needle in PLANTED_NEEDLES)
    again = served.client.get(f"/v1/imaging/studies/{body['study_uid']}/results", headers=headers)
    assert again.status_code == 200 and again.json()["instances"] == body["instances"]


@pytest.mark.parametrize(("blob", "status", "reason"), [
    (b"this is a text file, not DICOM", 415, "not_dicom"),
    (disc_instance("CT", BurnedInAnnotation="YES"), 422, "burned_in_annotation"),
])
def test_refused_instances_are_problems_and_nothing_is_stored(served: Service, blob: bytes, status: int,
                                                               reason: str) -> None:
    response = served.client.post("/v1/imaging/studies", files=[("files", ("x.dcm", blob, "application/dicom"))],
                                  headers=served.headers())
    assert response.status_code == status and response.json()["reason"] == reason
    assert "Winifred" not in response.text


# ------------------------------------------------------------------------------------------------ A4 diagnosis
def test_a_risk_assessment_with_its_explanation_is_cached_by_hmac(served: Service) -> None:
    headers = served.headers()
    patient = bundle(LOINC_ROWS)
    first = served.client.post("/v1/diagnosis/risk?explain=true", json=patient, headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert 0.0 <= body["probability"] <= 1.0 and body["risk_assessment"]["resourceType"] == "RiskAssessment"
    assert body["explanation"] and body["next_steps"] and body["cached"] is False
    assert PATIENT_NAME not in first.text and PATIENT_MRN not in first.text
    second = served.client.post("/v1/diagnosis/risk?explain=true", json=patient, headers=headers).json()
    assert second["cached"] is True and second["probability"] == body["probability"]
    assert 'medllm_cache_requests_total{outcome="hit",scenario="diagnosis"}' in served.client.get("/metrics").text
    feedback = served.client.post("/v1/feedback", json={"scenario": "diagnosis", "result_id": body["result_id"],
                                                        "agreement": "agree", "true_outcome": 1}, headers=headers)
    assert feedback.status_code == 201 and feedback.json()["result_attached"] is True
    stored = served.ctx.document_store().get("feedback", feedback.json()["feedback_id"]).document
    assert stored["result"]["probability"] == body["probability"] and stored["true_outcome"] == 1


@pytest.mark.parametrize(("payload", "reason"), [
    ({"resourceType": "Patient"}, "malformed_fhir"),
    (bundle([(codes.LOINC, "4548-4", 48, "%")]), "unit_confused"),
    (bundle([(codes.LOINC, "99999-9", 5.0, "mmol/L")]), "no_usable_observations"),
])
def test_bad_bundles_are_4xx_with_their_reason(served: Service, payload: dict, reason: str) -> None:
    response = served.client.post("/v1/diagnosis/risk", json=payload, headers=served.headers())
    assert 400 <= response.status_code < 500 and response.json()["reason"] == reason, response.text
    assert PATIENT_NAME not in response.text


def test_invalid_feedback_is_refused(served: Service) -> None:
    response = served.client.post("/v1/feedback", json={"scenario": "diagnosis", "agreement": "maybe"},
                                  headers=served.headers())
    assert response.status_code == 422 and response.json()["reason"] == "invalid_feedback"


# ------------------------------------------------------------------------------------------------ operations
def test_a_new_package_version_is_served_without_a_restart(served: Service,
                                                           tmp_path: Path) -> None:
    packages = served.home / "packages"
    before = served.ctx.models.get("t2d_risk")
    assert before is not None and before.version == "1"
    package_model("t2d_risk", "2", train_t2d(tmp_path / "t2d-v2", seed=11), packages, family="mlp",
                  dataset_version="e" * 64, requirements=[])
    served.ctx.models.refresh()  # what the background thread does every MEDLLM_SERVE_MODEL_REFRESH_S
    after = served.ctx.models.get("t2d_risk")
    assert after is not None and after.version == "2" and after.predictor is not before.predictor
    response = served.client.post("/v1/diagnosis/risk?explain=false", json=bundle(LOINC_ROWS),
                                  headers=served.headers())
    assert response.json()["model"]["version"] == "2" and response.json()["cached"] is False
    assert served.client.get("/readyz").json()["models"]["t2d_risk"]["version"] == "2"


def test_a_package_loads_in_a_fresh_process(packages: Path) -> None:
    code = ("import json,sys; from pathlib import Path; from medllm_pipelines.serving.models import ModelManager; "
            "m = ModelManager(tracking_uri=None, store_root=None, packaged_dir=Path(sys.argv[1]), "
            "names={'lesion_segmentation': 'imaging'}); print(json.dumps(m.refresh()))")
    out = subprocess.run([sys.executable, "-c", code, str(packages)], capture_output=True, text=True, timeout=120,
                         check=True)
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status["lesion_segmentation"]["served"]["version"] == "1"


def test_a_tampered_package_is_refused_and_the_served_version_stays(served: Service) -> None:
    packages = served.home / "packages"
    served_before = served.ctx.models.get("lesion_classifier")
    weights = next(p for p in (packages / "lesion_classifier").rglob("*.pt"))
    manifest = json.loads((packages / "lesion_classifier" / "package.json").read_text())
    manifest["version"] = "9"
    (packages / "lesion_classifier" / "package.json").write_text(json.dumps(manifest))
    weights.write_bytes(weights.read_bytes() + b"tampered")
    status = served.ctx.models.refresh()
    assert status["lesion_classifier"]["served"]["version"] == served_before.version
    assert "package refused" in (status["lesion_classifier"]["problem"] or "")
