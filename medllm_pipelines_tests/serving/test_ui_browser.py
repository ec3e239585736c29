"""The clinician page (``/ui/``) driven in Debian's headless Chromium against the real service over HTTP.

What a clinician sees: signing in (and a wrong secret's problem), a triage dialogue escalating to the emergency
banner, a note drafted, edited, versioned and signed with a TOTP code, a DICOM study's result row with its overlay,
and the diagnosis form's problem when no T2D model is served (and, with an answer of the assessor's shape, the
explanation bars and the feedback call). Every test fails on a console error: a Content-Security-Policy violation
(inline script or style) is one. Screenshots of each tab go to the test's tmp_path.

The browser is /usr/bin/chromium (Debian's package), never a downloaded one.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medllm_pipelines_tests.serving.conftest import Service

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed: apt-get install chromium",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
sync_api.expect.set_options(timeout=20_000)  # the first request of a scenario loads its data files

DEFAULT_TIMEOUT_MS = 20_000
FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")
NOTE_DIALOGUE = (
    "Doctor: What brings you in today?\n"
    "Patient: I've had a dry cough and a fever for three days, and my throat hurts.\n"
    "Doctor: Any shortness of breath or chest pain?\n"
    "Patient: No, just tired.\n"
    "Doctor: Your temperature is 38.2 and your chest sounds clear. This looks like acute bronchitis.\n"
    "Doctor: Take paracetamol 500 mg every six hours as needed, drink plenty of fluids and rest.\n"
)


# ---------------------------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tiny_segmenter() -> Any:
    """A small untrained UNet as the served lesion segmenter: the analyser's real path runs (mask, area,
    intensity, Grad-CAM overlay, DICOM SEG), only the weights are random."""
    import torch

    from medllm_pipelines.lib.train.imaging.networks import build_segmentation_network
    from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

    torch.manual_seed(0)
    network_spec = {"family": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 0, "dropout": 0.0}
    spec = {"task": "segmentation", "spec_id": "ui_test_segmenter", "roi_size": 64, "sw_batch_size": 1,
            "threshold": 0.5, "network": network_spec}
    return ImagingPredictor(build_segmentation_network(network_spec), spec)


def _imaging_analyser(service: Service) -> Any:
    """The analyser the service would build, with the small segmenter and the service's DICOM de-identifier."""
    from medllm_pipelines.lib.scenarios.imaging import ImagingAnalyser
    from medllm_pipelines.serving.scenarios import dicom_deidentifier

    return ImagingAnalyser(None, _tiny_segmenter(), models={"segmenter": {"name": "ui_test_segmenter", "version": "0"}},
                           deidentify=dicom_deidentifier(service.ctx))


@pytest.fixture(scope="module")
def base_url(service: Service) -> Iterator[str]:
    """The conftest's service app (context already built by its lifespan) served by uvicorn on a free port."""
    import uvicorn

    from medllm_pipelines.serving.routers import imaging as imaging_router

    analyser = _imaging_analyser(service)
    with pytest.MonkeyPatch.context() as patch:
        # no imaging model is registered on the throw-away home: serve the small one above
        patch.setattr(imaging_router, "imaging_service", lambda ctx: analyser)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(service.client.app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off", access_log=False, timeout_keep_alive=1,
                                               timeout_graceful_shutdown=2))
        thread = threading.Thread(target=server.run, name="ui-test-uvicorn", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("the test server did not answer /healthz") from None
                time.sleep(0.05)
        try:
            yield url
        finally:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


# ---------------------------------------------------------------------------------------------- the page
@dataclass
class Ui:
    page: Any
    service: Service
    base_url: str
    shots: Path
    console_errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)  # HTTP errors a test provokes on purpose

    def open(self) -> None:
        self.page.goto(self.base_url + "/ui/")

    def sign_in(self, role: str = "clinician", secret: str | None = None) -> None:
        client_id, real_secret = self.service.credentials[role]
        self.page.get_by_label("Client id").fill(client_id)
        self.page.get_by_label("Client secret").fill(real_secret if secret is None else secret)
        self.page.get_by_role("button", name="Sign in").click()

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def unexpected_console_errors(self) -> list[str]:
        unexpected = []
        for text in self.console_errors:
            failed = FAILED_LOAD.search(text)
            if failed is None or int(failed.group(1)) not in self.expected_statuses:
                unexpected.append(text)
        return unexpected


def _open_ui(browser: Any, service: Service, base_url: str, shots: Path, width: int = 1280) -> tuple[Any, Ui]:
    context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    ui = Ui(page, service, base_url, shots)
    page.on("console", lambda message: ui.console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: ui.console_errors.append(f"uncaught: {error}"))
    ui.open()
    return context, ui


@pytest.fixture
def ui(browser: Any, service: Service, base_url: str, tmp_path: Path) -> Iterator[Ui]:
    """A fresh browser context on the page, signed in as the clinician; fails on unexpected console errors."""
    context, opened = _open_ui(browser, service, base_url, tmp_path)
    opened.sign_in()
    sync_api.expect(opened.page.get_by_test_id("session-who")).to_have_text("Signed in as test-clinician (clinician)")
    try:
        yield opened
    finally:
        context.close()
    assert opened.unexpected_console_errors() == []


# ---------------------------------------------------------------------------------------------- tests
def test_a_wrong_secret_shows_the_problem_and_the_token_stays_out_of_storage(
        browser: Any, service: Service, base_url: str, tmp_path: Path) -> None:
    context, ui = _open_ui(browser, service, base_url, tmp_path)
    try:
        page = ui.page
        response = page.request.get(base_url + "/ui/")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        ui.expected_statuses = {401}
        ui.sign_in(secret="not-the-secret")
        problem = page.locator("#login-problem")
        sync_api.expect(problem).to_be_visible()
        sync_api.expect(problem).to_contain_text("reason: invalid_client")
        sync_api.expect(page.locator("#workspace")).to_be_hidden()
        ui.sign_in()
        sync_api.expect(page.get_by_test_id("session-who")).to_have_text("Signed in as test-clinician (clinician)")
        sync_api.expect(page.get_by_label("Client secret")).to_have_value("")
        stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
        assert stored == [0, 0, ""]
        page.get_by_role("button", name="Sign out").click()
        sync_api.expect(page.locator("#login")).to_be_visible()
        sync_api.expect(page.locator("#workspace")).to_be_hidden()
    finally:
        context.close()
    assert ui.unexpected_console_errors() == []


def test_every_tab_fits_an_800px_window(browser: Any, service: Service, base_url: str, tmp_path: Path) -> None:
    context, ui = _open_ui(browser, service, base_url, tmp_path, width=800)
    try:
        ui.sign_in()
        sync_api.expect(ui.page.get_by_test_id("session-who")).to_be_visible()
        for name, panel in (("Pre-consultation", "#panel-triage"), ("Notes", "#panel-notes"),
                            ("Imaging", "#panel-imaging"), ("Risk", "#panel-risk")):
            ui.tab(name)
            sync_api.expect(ui.page.locator(panel)).to_be_visible()
            overflow = ui.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            ui.screenshot(f"800px-{name.lower()}")
            assert overflow <= 0, f"the {name} tab scrolls sideways by {overflow}px at 800px"
        # keyboard: the tab list moves with the arrow keys (WAI-ARIA tabs)
        ui.page.get_by_role("tab", name="Risk").press("ArrowRight")
        sync_api.expect(ui.page.get_by_role("tab", name="Pre-consultation")).to_have_attribute("aria-selected", "true")
    finally:
        context.close()
    assert ui.unexpected_console_errors() == []


def test_a_red_flag_escalates_the_triage_chat_with_a_banner(ui: Ui) -> None:
    page = ui.page
    sync_api.expect(page.get_by_role("log")).to_have_attribute("aria-live", "polite")
    page.get_by_label("Patient's message").fill("crushing chest pain and I can't breathe")
    page.get_by_role("button", name="Send").click()
    banner = page.locator("#triage-emergency")
    sync_api.expect(banner).to_be_visible()
    sync_api.expect(banner).to_contain_text("Emergency")
    sync_api.expect(page.locator(".bubble.user")).to_have_text(re.compile("crushing chest pain"))
    assert page.locator(".bubble.bot").count() >= 1
    sync_api.expect(page.get_by_role("button", name="Send")).to_be_disabled()
    ui.screenshot("triage")


def test_a_triage_dialogue_is_answered_with_quick_replies_until_a_department(ui: Ui) -> None:
    page = ui.page
    page.get_by_label("Patient's message").fill("I've had a headache since yesterday")
    page.get_by_role("button", name="Send").click()
    result = page.locator("#triage-result")
    quick = page.get_by_role("group", name="Quick answers")
    sync_api.expect(quick).to_be_visible()  # a vague complaint: the engine asks a yes/no question first
    sync_api.expect(result).to_be_hidden()
    for _ in range(12):  # the engine asks at most a handful of questions
        answers = page.locator(".bubble.user").count()
        quick.get_by_role("button", name="No", exact=True).click()
        sync_api.expect(page.locator(".bubble.user")).to_have_count(answers + 1)
        sync_api.expect(page.locator(".bubble.user").last).to_have_text(re.compile("No$"))
        sync_api.expect(result.or_(quick)).to_be_visible()
        if result.is_visible():
            break
    sync_api.expect(result).to_be_visible()
    sync_api.expect(quick).to_be_hidden()
    sync_api.expect(result).to_contain_text(re.compile(r"Department\s*\S+"))
    sync_api.expect(page.locator("#triage-emergency")).to_be_hidden()
    assert page.locator(".bubble.bot").count() >= 2  # the question and the closing advice
    sync_api.expect(page.get_by_role("button", name="Send")).to_be_disabled()


def _other_code(authenticator: Any) -> str:
    """A six-digit code that is not valid now or in the neighbouring time steps."""
    now = time.time()
    valid = {authenticator.at(now + step * 30) for step in (-1, 0, 1)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


def test_a_note_is_drafted_edited_versioned_and_signed_with_totp(ui: Ui) -> None:
    page = ui.page
    ui.tab("Notes")
    page.get_by_label("Dialogue transcript or dictation").fill(NOTE_DIALOGUE)
    page.get_by_role("button", name="Draft note").click()
    sync_api.expect(page.get_by_test_id("note-version")).to_have_text("version 1")
    sync_api.expect(page.locator("#note-text-rendered")).not_to_be_empty()

    plan = page.locator('textarea[data-field="plan"]')
    plan.fill("Review in two weeks\nChest X-ray if the fever persists")
    page.get_by_role("button", name="Save changes").click()
    sync_api.expect(page.get_by_test_id("note-version")).to_have_text("version 2")
    sync_api.expect(page.locator("#note-text-rendered")).to_contain_text("Review in two weeks")

    page.get_by_role("button", name="Version history").click()
    versions = page.locator("#note-history-list > li")
    sync_api.expect(versions).to_have_count(2)
    sync_api.expect(versions.nth(1).locator("pre")).to_contain_text("Review in two weeks")
    sync_api.expect(versions.nth(1)).to_contain_text("by test-clinician")

    # a wrong code is refused with its reason; the note stays editable
    ui.expected_statuses = {403}
    page.get_by_role("button", name="Sign note").click()
    page.get_by_label("Authenticator code (TOTP) to sign").fill(_other_code(ui.service.authenticators["clinician"]))
    page.get_by_role("button", name="Confirm signature").click()
    sync_api.expect(page.locator("#note-problem")).to_contain_text("reason: mfa_failed")
    sync_api.expect(plan).to_be_editable()

    page.get_by_label("Authenticator code (TOTP) to sign").fill(ui.service.authenticators["clinician"].now())
    page.get_by_role("button", name="Confirm signature").click()
    sync_api.expect(page.locator("#note-status")).to_contain_text("Signed by test-clinician")
    sync_api.expect(page.locator("#note-problem")).to_be_hidden()
    sync_api.expect(plan).not_to_be_editable()
    sync_api.expect(page.get_by_role("button", name="Save changes")).to_be_hidden()
    sync_api.expect(page.get_by_role("button", name="Sign note")).to_be_hidden()
    sync_api.expect(versions.last).to_contain_text("signed")
    ui.screenshot("notes")


def _dicom_file(folder: Path) -> Path:
    import pydicom

    from medllm_pipelines_tests.lib.scenarios.test_imaging_instances import dicom_dataset, disc_slice

    pixels, _ = disc_slice("CT")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dicom_dataset(pixels, modality="CT"), enforce_file_format=True)
    path = folder / "slice-1.dcm"
    path.write_bytes(buffer.getvalue())
    return path


def test_an_uploaded_dicom_shows_its_result_row_overlay_and_segmentation(ui: Ui, tmp_path: Path) -> None:
    page = ui.page
    ui.tab("Imaging")
    page.get_by_label("DICOM instances of one study").set_input_files(str(_dicom_file(tmp_path)))
    page.get_by_role("button", name="Analyse").click()
    rows = page.locator("#imaging-table tbody tr")
    sync_api.expect(rows).to_have_count(1)
    sync_api.expect(rows.first.locator("td.probability")).to_contain_text(re.compile(r"\d+\.\d %"))
    sync_api.expect(rows.first.locator("td.area")).to_contain_text(re.compile(r"mm²"))
    sync_api.expect(rows.first).to_contain_text("64 × 64")
    image = rows.first.locator("img.overlay-image")
    sync_api.expect(image).to_have_attribute("src", re.compile("^blob:"))
    page.wait_for_function("() => document.querySelector('img.overlay-image')?.naturalWidth > 0")
    assert page.locator("#imaging-table").inner_text().count("Planted") == 0
    with page.expect_download() as download:
        page.get_by_role("button", name="Download segmentation (DICOM SEG)").click()
    saved = tmp_path / "segmentation.dcm"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "segmentation.dcm"
    assert saved.read_bytes()[128:132] == b"DICM"
    ui.screenshot("imaging")


def _fill_risk_form(page: Any) -> None:
    page.get_by_label("Sex").select_option("female")
    page.get_by_label("Birth date").fill("1968-04-02")
    page.get_by_label("HbA1c (%)").fill("6.9")
    page.get_by_label("Fasting glucose (mmol/L)").fill("7.4")
    page.get_by_label("BMI (kg/m²)").fill("31.2")
    page.get_by_label("Systolic blood pressure (mmHg)").fill("142")


def test_the_risk_form_shows_the_problem_when_no_model_is_served(ui: Ui) -> None:
    page = ui.page
    ui.expected_statuses = {503}
    ui.tab("Risk")
    _fill_risk_form(page)
    page.get_by_role("button", name="Assess risk").click()
    problem = page.locator("#risk-problem")
    sync_api.expect(problem).to_be_visible()
    sync_api.expect(problem).to_contain_text("no t2d_risk version holds the champion alias")
    sync_api.expect(problem).to_contain_text("reason: model_unavailable")
    sync_api.expect(page.locator("#risk-result")).to_be_hidden()
    ui.screenshot("risk")


def _t2d_bundle_reader() -> Any:
    """The reader RiskAssessor builds (same spec, rules, ranges, crosswalk and policy), without a model."""
    from medllm_pipelines.lib.curate.spec import load_spec
    from medllm_pipelines.lib.deidentify.policy import load_policy
    from medllm_pipelines.lib.evaluate.robustness import PlausibilityFilter
    from medllm_pipelines.lib.quality.cleaning import load_rules
    from medllm_pipelines.lib.quality.crosswalk import load_crosswalk
    from medllm_pipelines.lib.scenarios.diagnosis.assessor import SPEC_ID
    from medllm_pipelines.lib.scenarios.diagnosis.bundle import BundleReader

    spec, rules = load_spec(SPEC_ID), load_rules()
    return BundleReader(spec, spec.feature_columns, rules=rules, plausibility=PlausibilityFilter.from_rules(rules),
                        crosswalk=load_crosswalk(), policy=load_policy())


def test_the_risk_answer_draws_its_contributions_and_sends_feedback(ui: Ui) -> None:
    """The assessor's answer (lib/scenarios/diagnosis/assessor.py) stubbed in the browser, the feedback real;
    the Bundle the page sends is read by the scenario's own reader into the values typed."""
    page = ui.page
    sent: list[dict[str, Any]] = []
    explanation = [{"feature": "hba1c", "value": 6.9, "contribution": 0.21},
                   {"feature": "bmi", "value": 31.2, "contribution": 0.08},
                   {"feature": "heart_rate", "value": 72.0, "contribution": -0.03, "imputed": True}]
    answer = {"probability": 0.71, "threshold": 0.42, "risk_level": "high", "explanation": explanation,
              "baseline_probability": 0.45, "explanation_method": "exact Shapley values",
              "next_steps": [{"id": "confirm_hba1c", "text": "Repeat HbA1c to confirm.", "evidence": "ADA 2024 s2"}],
              "warnings": [{"code": "imputed_inputs", "detail": "not measured, imputed: heart_rate"}],
              "model": {"name": "t2d_risk", "version": "3"}, "rules_version": "1.0.0",
              "result_id": "a" * 64, "cached": False}

    def fulfil(route: Any) -> None:
        sent.append(route.request.post_data_json)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    page.route("**/v1/diagnosis/risk?explain=true", fulfil)
    ui.tab("Risk")
    _fill_risk_form(page)
    page.get_by_role("button", name="Assess risk").click()
    sync_api.expect(page.locator("#risk-probability")).to_have_text("71.0 %")
    sync_api.expect(page.locator("#risk-level")).to_have_text("high risk")
    sync_api.expect(page.locator("#risk-chart rect.bar")).to_have_count(3)
    bars = page.locator("#risk-chart rect.bar")
    assert bars.evaluate_all("els => els.map(e => e.classList.contains('up'))") == [True, True, False]
    widths = [float(w) for w in bars.evaluate_all("els => els.map(e => e.getAttribute('width'))")]
    assert widths[0] > widths[1] > widths[2]  # proportional to |contribution|
    sync_api.expect(page.locator("#risk-steps li")).to_have_text(["Repeat HbA1c to confirm. (ADA 2024 s2)"])

    extraction = _t2d_bundle_reader().read(sent[0])
    assert extraction.warnings == []
    features = dict(extraction.features)
    assert 50 <= features.pop("age_years") <= 65  # the age band's midpoint at the results' date
    assert {k: v for k, v in features.items() if v is not None} == {
        "sex": "female", "hba1c": 6.9, "fasting_glucose": 7.4, "bmi": 31.2, "systolic_bp": 142.0}

    with page.expect_response("**/v1/feedback") as feedback:
        page.get_by_role("button", name="Agree", exact=True).click()
    assert feedback.value.status == 201
    assert feedback.value.request.post_data_json == {"scenario": "diagnosis", "result_id": "a" * 64,
                                                     "agreement": "agree"}
    sync_api.expect(page.locator("#risk-feedback-message")).to_contain_text("Feedback recorded (agree)")
    sync_api.expect(page.get_by_role("button", name="Disagree")).to_be_disabled()
    ui.screenshot("risk-answer")

