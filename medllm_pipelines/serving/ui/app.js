/* The clinician page of the medllm REST service: plain JavaScript, no framework, no build step.
 *
 * The page is served under a strict Content-Security-Policy (default-src 'self'): no inline script, no inline
 * style, so every element is built here with createElement and styled by class (app.css). Text from the service
 * or the user is only ever set with textContent, never parsed as HTML.
 *
 * The bearer token lives in this closure only (never localStorage/sessionStorage): a reload or a closed tab
 * signs the clinician out. Binary results (overlays, the DICOM SEG) are fetched with the Authorization header and
 * shown through blob: URLs, since a plain <img src> cannot send the header.
 */
(() => {
  "use strict";

  const PROBLEM_TITLES = { network_error: "The service could not be reached" };
  const UCUM = "http://unitsofmeasure.org";
  const LOINC = "http://loinc.org";
  // The observations the T2D model reads (lib/common/codes.py CONCEPTS), in their canonical UCUM units.
  // The browser only checks the input is a number; plausibility ranges are the service's (it answers
  // implausible_value or unit_confused problems with the field named).
  const RISK_OBSERVATIONS = [
    { id: "hba1c", label: "HbA1c", unit: "%", ucum: "%", loinc: "4548-4" },
    { id: "fasting_glucose", label: "Fasting glucose", unit: "mmol/L", ucum: "mmol/L", loinc: "14771-0" },
    { id: "bmi", label: "BMI", unit: "kg/m²", ucum: "kg/m2", loinc: "39156-5" },
    { id: "body_weight", label: "Body weight", unit: "kg", ucum: "kg", loinc: "29463-7" },
    { id: "body_height", label: "Body height", unit: "cm", ucum: "cm", loinc: "8302-2" },
    { id: "systolic_bp", label: "Systolic blood pressure", unit: "mmHg", ucum: "mm[Hg]", loinc: "8480-6" },
    { id: "diastolic_bp", label: "Diastolic blood pressure", unit: "mmHg", ucum: "mm[Hg]", loinc: "8462-4" },
    { id: "heart_rate", label: "Heart rate", unit: "/min", ucum: "/min", loinc: "8867-4" },
    { id: "total_cholesterol", label: "Total cholesterol", unit: "mmol/L", ucum: "mmol/L", loinc: "14647-2" },
  ];
  const FEATURE_LABELS = Object.fromEntries(RISK_OBSERVATIONS.map((o) => [o.id, o.label]));
  FEATURE_LABELS.age_years = "Age (years)";
  FEATURE_LABELS.sex = "Sex";

  const auth = { token: null, expiresAt: 0, principal: "", role: "" };
  const state = { triage: null, note: null, risk: null, blobUrls: [] };

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children (strings become text nodes: never HTML). */
  function h(tag, attrs = {}, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") element.className = value;
      else if (name === "text") element.textContent = value;
      else element.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  function svg(tag, attrs = {}, text) {
    const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  // ------------------------------------------------------------------ problems (RFC 9457)
  class ApiProblem extends Error {
    constructor({ status = 0, title = "Error", detail = "", reason = "", instance = "" }) {
      super(detail || title);
      Object.assign(this, { status, title, detail, reason, instance });
    }
  }

  async function problemFrom(response) {
    let body = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) {
      try { body = await response.json(); } catch { body = null; }
    }
    body = body && typeof body === "object" ? body : {};
    return new ApiProblem({
      status: response.status,
      title: body.title || response.statusText || "Error",
      detail: typeof body.detail === "string" ? body.detail : `the service answered HTTP ${response.status}`,
      reason: body.reason || `http_${response.status}`,
      instance: body.instance || "",
    });
  }

  function asProblem(error) {
    if (error instanceof ApiProblem) return error;
    return new ApiProblem({ title: PROBLEM_TITLES.network_error, reason: "network_error",
      detail: "the request did not reach the service or its answer was unreadable; check the connection and retry" });
  }

  function showProblem(container, error) {
    const problem = asProblem(error);
    container.replaceChildren(
      h("p", { class: "problem-title" }, problem.status ? `${problem.title} (HTTP ${problem.status})` : problem.title),
      h("p", { class: "problem-detail" }, problem.detail),
      h("p", { class: "problem-reason" }, `reason: ${problem.reason}`,
        problem.instance ? ` · ${problem.instance}` : ""),
    );
    container.hidden = false;
  }

  function clearProblem(container) {
    container.hidden = true;
    container.replaceChildren();
  }

  // ------------------------------------------------------------------ the API
  /** A call with the bearer token; resolves to JSON (or a Blob), rejects with an ApiProblem. */
  async function api(method, path, { json, formData, headers = {}, as = "json" } = {}) {
    if (!auth.token || Date.now() >= auth.expiresAt) {
      signOut("Your session has ended: sign in again.");
      throw new ApiProblem({ status: 401, title: "Authentication required", reason: "token_missing",
        detail: "sign in to call the service" });
    }
    const init = { method, headers: { Authorization: `Bearer ${auth.token}`,
      Accept: "application/json, application/problem+json", ...headers } };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (formData !== undefined) {
      init.body = formData; // the browser sets multipart/form-data with its boundary
    }
    if (as === "blob") init.headers.Accept = "*/*";
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw asProblem(error);
    }
    if (!response.ok) {
      const problem = await problemFrom(response);
      if (response.status === 401) signOut(`Signed out: ${problem.detail} (${problem.reason}).`);
      throw problem;
    }
    return as === "blob" ? response.blob() : response.json();
  }

  async function busy(button, work) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      return await work();
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // ------------------------------------------------------------------ sign in / out
  async function signIn(event) {
    event.preventDefault();
    const problemBox = $("login-problem");
    clearProblem(problemBox);
    const body = new URLSearchParams({ grant_type: "client_credentials",
      client_id: $("client-id").value.trim(), client_secret: $("client-secret").value });
    const button = event.submitter || $("login-form").querySelector("button");
    await busy(button, async () => {
      try {
        const response = await fetch("/v1/auth/token", { method: "POST", body,
          headers: { Accept: "application/json, application/problem+json" } });
        if (!response.ok) throw await problemFrom(response);
        const token = await response.json();
        auth.token = token.access_token;
        auth.expiresAt = Date.now() + Math.max(0, Number(token.expires_in) - 5) * 1000;
        auth.principal = token.principal;
        auth.role = token.role;
      } catch (error) {
        showProblem(problemBox, error);
        return;
      }
      $("client-secret").value = ""; // the secret is not kept anywhere
      $("session-who").textContent = `Signed in as ${auth.principal} (${auth.role})`;
      $("session").hidden = false;
      $("login").hidden = true;
      $("workspace").hidden = false;
      selectTab($("tab-triage"), false);
    });
  }

  function signOut(message) {
    Object.assign(auth, { token: null, expiresAt: 0, principal: "", role: "" });
    $("session").hidden = true;
    $("workspace").hidden = true;
    $("login").hidden = false;
    resetWorkspace();
    const box = $("login-problem");
    if (message) {
      box.replaceChildren(h("p", { class: "problem-detail" }, message));
      box.hidden = false;
    } else {
      clearProblem(box);
    }
  }

  function revokeBlobs() {
    for (const url of state.blobUrls) URL.revokeObjectURL(url);
    state.blobUrls = [];
  }

  function resetWorkspace() {
    resetTriage();
    state.note = null;
    $("note-view").hidden = true;
    $("note-text").value = "";
    revokeBlobs();
    $("imaging-result").hidden = true;
    $("imaging-table").tBodies[0].replaceChildren();
    state.risk = null;
    $("risk-result").hidden = true;
    for (const id of ["note-problem", "imaging-problem", "risk-problem", "triage-problem"]) clearProblem($(id));
  }

  // ------------------------------------------------------------------ tabs (WAI-ARIA tabs pattern)
  function selectTab(tab, focus = true) {
    for (const other of document.querySelectorAll('[role="tab"]')) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
  }

  function onTabKey(event) {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    const index = tabs.indexOf(event.target);
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length]);
  }

  // ------------------------------------------------------------------ formatting
  const percent = (value, digits = 1) => (typeof value === "number" ? `${(value * 100).toFixed(digits)} %` : "—");
  const humanise = (name) => String(name).replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

  /** One list item of the triage result: a string, or an object named by its usual keys. */
  function describeItem(item) {
    if (item === null || item === undefined) return "";
    if (typeof item !== "object") return String(item);
    const name = item.name_en || item.name || item.label || item.display || item.term || item.description
      || item.text || item.id || item.code;
    const zh = item.name_zh && item.name_zh !== name ? ` / ${item.name_zh}` : "";
    const codeValue = item.icd10 || item.code;
    const code = codeValue && codeValue !== name ? ` (${codeValue})` : "";
    const score = [item.probability, item.score, item.confidence].find((v) => typeof v === "number");
    const denied = item.present === false ? " — denied" : "";
    return `${name ?? JSON.stringify(item)}${zh}${code}${denied}${score !== undefined ? ` — ${percent(score)}` : ""}`;
  }

  function describeText(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value;
    if (Array.isArray(value)) return value.map(describeText).join("\n");
    if (typeof value === "object") return value.en || value.text || value.zh || JSON.stringify(value);
    return String(value);
  }

  function listOrDash(items) {
    const values = (Array.isArray(items) ? items : items ? [items] : []).map(describeItem).filter(Boolean);
    return values.length ? h("ul", {}, values.map((v) => h("li", {}, v))) : "none";
  }

  function definitions(pairs) {
    return h("dl", {}, pairs.filter(([, v]) => v !== undefined)
      .flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
  }

  // ------------------------------------------------------------------ A1 pre-consultation
  function bubble(kind, text) {
    const who = { bot: "Assistant", user: "Patient", system: "" }[kind];
    const item = h("div", { class: `bubble ${kind}` }, who ? h("span", { class: "who" }, who) : null, text);
    $("chat-log").append(item);
    item.scrollIntoView({ block: "nearest" });
    return item;
  }

  function resetTriage() {
    state.triage = null;
    $("chat-log").replaceChildren();
    $("triage-emergency").hidden = true;
    $("triage-result").hidden = true;
    $("triage-result").replaceChildren();
    $("triage-language").disabled = false;
    $("triage-text").disabled = false;
    $("triage-send").disabled = false;
    showQuickReplies(false);
    clearProblem($("triage-problem"));
  }

  // One-tap answers to a yes/no question, in phrases the triage engine reads (triage/symptoms.yaml answers).
  const QUICK_REPLIES = { en: ["Yes", "No", "Not sure"], zh: ["有", "没有", "不确定"] };

  function showQuickReplies(visible) {
    const box = $("triage-quick");
    box.replaceChildren();
    box.hidden = !visible;
    if (!visible) return;
    for (const answer of QUICK_REPLIES[$("triage-language").value] || QUICK_REPLIES.en) {
      const button = h("button", { type: "button", class: "secondary" }, answer);
      button.addEventListener("click", () => {
        $("triage-text").value = answer;
        $("triage-form").requestSubmit();
      });
      box.append(button);
    }
  }

  function questionText(question) {
    if (!question) return "";
    if (typeof question === "string") return question;
    return question.text || question.prompt || question.question || "";
  }

  function renderTriage(reply) {
    state.triage = { sessionId: reply.session_id, status: reply.status };
    const message = describeText(reply.message);
    const question = questionText(reply.question);
    if (message) bubble("bot", message);
    if (question && question !== message && !message.includes(question)) bubble("bot", question);
    showQuickReplies(reply.status === "asking" && reply.question && reply.question.kind === "yes_no");
    const result = reply.result;
    if (reply.status === "escalated" || (result && result.escalated)) {
      const flags = (result && result.red_flags) || [];
      $("triage-emergency-detail").textContent = flags.length
        ? `Red flags: ${flags.map(describeItem).join(", ")}.` : "A red-flag symptom was reported.";
      $("triage-emergency").hidden = false;
    }
    if (result) renderTriageResult(result);
    if (reply.status === "done" || reply.status === "escalated") {
      bubble("system", "This pre-consultation has ended. Start a new consultation for another patient.");
      $("triage-text").disabled = true;
      $("triage-send").disabled = true;
    }
  }

  function renderTriageResult(result) {
    const department = result.department || {};
    const departmentText = describeItem(department) || "—";
    const card = $("triage-result");
    card.replaceChildren(
      h("h3", {}, "Triage result"),
      definitions([
        ["Department", departmentText],
        ["Confidence", percent(result.confidence)],
        ["Department ranking", Array.isArray(result.departments) && result.departments.length
          ? result.departments.map((d) => `${d.code} ${percent(d.probability)}`).join(" · ") : undefined],
        ["Escalated", result.escalated ? h("span", { class: "badge escalated" }, "yes: emergency") : "no"],
        ["Red flags", listOrDash(result.red_flags)],
        ["Symptoms", listOrDash(result.symptoms)],
        ["Candidate diseases", listOrDash(result.candidate_diseases)],
        ["Advice", describeText(result.advice) || "—"],
      ]),
    );
    card.hidden = false;
  }

  async function sendTriage(event) {
    event.preventDefault();
    const input = $("triage-text");
    const text = input.value.trim();
    if (!text) return;
    clearProblem($("triage-problem"));
    await busy($("triage-send"), async () => {
      try {
        let reply;
        if (state.triage && state.triage.sessionId) {
          const path = `/v1/triage/sessions/${encodeURIComponent(state.triage.sessionId)}/messages`;
          reply = await api("POST", path, { json: { text } });
        } else {
          reply = await api("POST", "/v1/triage/sessions", { json: { language: $("triage-language").value, message: text } });
          $("triage-language").disabled = true;
        }
        bubble("user", text);
        input.value = "";
        renderTriage(reply);
      } catch (error) {
        showProblem($("triage-problem"), error);
      }
    });
    if (state.triage && (state.triage.status === "done" || state.triage.status === "escalated")) {
      $("triage-send").disabled = true;
    }
  }

  // ------------------------------------------------------------------ A2 notes
  function itemsText(items) {
    return (Array.isArray(items) ? items : items ? [String(items)] : []).join("\n");
  }

  // How a clinician reads a note top to bottom; the store returns the fields with sorted keys. A field not
  // listed here (a new kind) follows in the order received. `note.field_order`, when the API sends it, wins.
  const FIELD_READING_ORDER = ["chief_complaint", "subjective", "history", "objective", "findings",
    "preoperative_diagnosis", "postoperative_diagnosis", "indications", "procedure", "anaesthesia", "complications",
    "estimated_blood_loss", "specimens", "assessment", "medications", "plan"];

  function orderedFields(note) {
    const fields = note.fields || {};
    const order = Array.isArray(note.field_order) ? note.field_order : FIELD_READING_ORDER;
    const rank = (name) => (order.includes(name) ? order.indexOf(name) : order.length);
    return Object.entries(fields).map((entry, index) => [entry, index])
      .sort(([a, i], [b, j]) => rank(a[0]) - rank(b[0]) || i - j).map(([entry]) => entry);
  }

  function renderNote(response) {
    state.note = response;
    const note = response.note || {};
    const signed = Boolean(response.signed);
    $("note-id").textContent = response.note_id;
    $("note-version").textContent = `version ${response.version}`;
    const status = $("note-status");
    status.className = `badge ${signed ? "signed" : "draft"}`;
    status.textContent = signed
      ? `Signed by ${response.signed_by || "?"}${response.signed_at ? ` at ${response.signed_at}` : ""} · read-only`
      : "Draft: editable until signed";
    const fields = $("note-fields");
    fields.replaceChildren();
    for (const [name, items] of orderedFields(note)) {
      const id = `note-field-${name}`;
      const value = itemsText(items);
      const area = h("textarea", { id, "data-field": name, rows: Math.min(8, Math.max(2, value.split("\n").length + 1)),
        "aria-describedby": "note-fields-help" });
      area.value = value;
      area.dataset.original = value;
      area.readOnly = signed;
      fields.append(h("div", { class: "field" }, h("label", { for: id }, humanise(name)), area));
    }
    fields.append(h("p", { id: "note-fields-help", class: "meta" }, "One item per line."));
    $("note-save").hidden = signed;
    $("note-sign-button").hidden = signed;
    $("note-sign-form").hidden = true;
    $("note-text-rendered").textContent = note.text || "";
    const body = $("note-terminology").tBodies[0];
    body.replaceChildren(...(note.terminology || []).map((t) => h("tr", {},
      h("td", {}, humanise(t.field || "")), h("td", {}, t.text || ""), h("td", {}, t.system || ""),
      h("td", { class: "mono" }, t.code || t.atc || "—"), h("td", {}, t.display || t.normalised || "—"),
      h("td", {}, t.match || ""))));
    if (!body.rows.length) body.append(h("tr", {}, h("td", { colspan: 6 }, "No diagnosis or drug recognised.")));
    $("note-composition").textContent = note.composition ? JSON.stringify(note.composition, null, 2) : "";
    const model = note.model || {};
    $("note-model").textContent = `Drafted by ${model.name || "the extractive drafter (no generator model served)"}`
      + `${model.version ? ` version ${model.version}` : ""}. Check every field against the source before signing.`;
    $("note-view").hidden = false;
  }

  async function draftNote(event) {
    event.preventDefault();
    clearProblem($("note-problem"));
    $("note-message").textContent = "";
    $("note-history").hidden = true;
    await busy($("note-draft"), async () => {
      try {
        renderNote(await api("POST", "/v1/ehr/drafts", { json: {
          text: $("note-text").value, kind: $("note-kind").value, source: $("note-source").value,
          language: $("note-language").value } }));
        $("note-message").textContent = "Draft created (version 1).";
      } catch (error) {
        showProblem($("note-problem"), error);
      }
    });
  }

  async function saveNote(event) {
    event.preventDefault();
    if (!state.note || state.note.signed) return;
    clearProblem($("note-problem"));
    const changed = {};
    for (const area of $("note-fields").querySelectorAll("textarea[data-field]")) {
      if (area.value.trim() !== area.dataset.original.trim()) changed[area.dataset.field] = area.value;
    }
    if (!Object.keys(changed).length) {
      $("note-message").textContent = "Nothing changed.";
      return;
    }
    await busy($("note-save"), async () => {
      try {
        renderNote(await api("PUT", `/v1/ehr/notes/${encodeURIComponent(state.note.note_id)}`,
          { json: { fields: changed, expected_version: state.note.version } }));
        $("note-message").textContent = `Saved as version ${state.note.version}.`;
        if (!$("note-history").hidden) await loadHistory();
      } catch (error) {
        showProblem($("note-problem"), error);
      }
    });
  }

  async function loadHistory() {
    if (!state.note) return;
    clearProblem($("note-problem"));
    try {
      const answer = await api("GET", `/v1/ehr/notes/${encodeURIComponent(state.note.note_id)}/versions`);
      const list = $("note-history-list");
      const versions = answer.versions || [];
      list.replaceChildren(...versions.map((v, index) => h("li", { "data-version": v.version },
        h("p", {}, h("strong", {}, `Version ${v.version}`), ` by ${v.author} at ${v.created_at} `,
          v.signed ? h("span", { class: "badge signed" }, "signed") : ""),
        h("details", { open: index === versions.length - 1 },
          h("summary", {}, index === 0 ? "Content as first drafted" : "Changes from the previous version"),
          diffView(v.diff)))));
      $("note-history").hidden = false;
    } catch (error) {
      showProblem($("note-problem"), error);
    }
  }

  /** A unified diff as lines coloured by their first character (added, removed, hunk header). */
  function diffView(diff) {
    if (diff === null || diff === undefined || diff === "") return h("pre", { class: "diff" }, "(first version)");
    const text = typeof diff === "string" ? diff : JSON.stringify(diff, null, 2);
    const kinds = { "+": "add", "-": "del", "@": "hunk" };
    return h("pre", { class: "diff" }, text.split("\n").map((line) => {
      const kind = line.startsWith("+++") || line.startsWith("---") ? "file" : kinds[line[0]] || "same";
      return h("span", { class: `line ${kind}` }, line || " ");
    }));
  }

  function askSignature() {
    $("note-sign-form").hidden = false;
    $("note-totp").value = "";
    $("note-totp").focus();
  }

  async function signNote(event) {
    event.preventDefault();
    if (!state.note) return;
    clearProblem($("note-problem"));
    const code = $("note-totp").value.trim();
    await busy($("note-sign-confirm"), async () => {
      try {
        renderNote(await api("POST", `/v1/ehr/notes/${encodeURIComponent(state.note.note_id)}/sign`,
          { headers: { "X-MFA-Code": code } }));
        $("note-message").textContent = "Signed: the note is now final and read-only.";
        if (!$("note-history").hidden) await loadHistory();
      } catch (error) {
        showProblem($("note-problem"), error);
      } finally {
        $("note-totp").value = "";
      }
    });
  }

  // ------------------------------------------------------------------ A3 imaging
  function blobUrl(blob) {
    const url = URL.createObjectURL(blob);
    state.blobUrls.push(url);
    return url;
  }

  function fixed(value, digits) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : null;
  }

  function imagingRow(instance) {
    const uid = String(instance.sop_instance_uid || "");
    const area = fixed(instance.lesion_area_mm2, 1) !== null ? `${fixed(instance.lesion_area_mm2, 1)} mm²`
      : typeof instance.lesion_area_pixels === "number" ? `${instance.lesion_area_pixels} px`
        : "not measured (no segmentation model)";
    const mean = fixed(instance.mean_intensity_in_lesion, 1);
    const overlayCell = h("td", { class: "overlay" });
    const row = h("tr", { "data-instance": uid },
      h("td", { class: "mono", title: uid }, uid.length > 16 ? `…${uid.slice(-14)}` : uid),
      h("td", {}, instance.rows && instance.columns ? `${instance.rows} × ${instance.columns}` : "—"),
      h("td", { class: "probability" }, percent(instance.lesion_probability),
        h("br"), instance.lesion ? h("span", { class: "badge high" }, "lesion") : h("span", { class: "badge low" }, "no lesion"),
        typeof instance.threshold === "number" ? h("span", { class: "meta" }, ` threshold ${instance.threshold}`) : ""),
      h("td", { class: "area" }, area, instance.area_note && instance.area_note !== "PixelSpacing"
        ? h("span", { class: "meta" }, ` (${instance.area_note})`) : ""),
      h("td", { class: "intensity" }, mean !== null ? `${mean} ${instance.intensity_unit || ""}`.trim() : "—"),
      overlayCell);
    if (instance.overlay_url) {
      overlayCell.textContent = "loading…";
      api("GET", instance.overlay_url, { as: "blob" }).then((blob) => {
        const image = h("img", { alt: `Grad-CAM and lesion overlay of instance ${uid.slice(-14)}`, class: "overlay-image" });
        image.src = blobUrl(blob);
        overlayCell.replaceChildren(image);
      }).catch((error) => {
        overlayCell.textContent = `no overlay (${asProblem(error).reason})`;
      });
    } else {
      overlayCell.textContent = "—";
    }
    return row;
  }

  function renderImaging(result) {
    revokeBlobs();
    const instances = result.instances || [];
    const study = String(result.study_uid || "");
    const counted = `${instances.length} instance${instances.length === 1 ? "" : "s"}`;
    $("imaging-summary").textContent = `Study …${study.slice(-16)}: ${counted} analysed (de-identified before analysis).`;
    $("imaging-table").tBodies[0].replaceChildren(...instances.map(imagingRow));
    const seg = $("imaging-seg");
    seg.hidden = !result.segmentation_url;
    seg.dataset.url = result.segmentation_url || "";
    const report = result.diagnostic_report || {};
    $("imaging-report").textContent = report.conclusion ? `Report: ${report.conclusion}` : "";
    const models = result.models || {};
    $("imaging-models").textContent = Object.entries(models)
      .map(([role, m]) => (m && m.loaded ? `${role}: ${m.name} version ${m.version}` : `${role}: not served`)).join(" · ");
    $("imaging-result").hidden = false;
  }

  async function submitImaging(event) {
    event.preventDefault();
    clearProblem($("imaging-problem"));
    const files = [...$("imaging-files").files];
    if (!files.length) {
      showProblem($("imaging-problem"), new ApiProblem({ title: "No file chosen", reason: "no_instances",
        detail: "choose one or more DICOM files of one study" }));
      return;
    }
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    await busy($("imaging-submit"), async () => {
      try {
        renderImaging(await api("POST", "/v1/imaging/studies", { formData: form }));
      } catch (error) {
        $("imaging-result").hidden = true;
        showProblem($("imaging-problem"), error);
      }
    });
  }

  async function downloadSegmentation() {
    const button = $("imaging-seg");
    await busy(button, async () => {
      try {
        const blob = await api("GET", button.dataset.url, { as: "blob" });
        const link = h("a", { href: blobUrl(blob), download: "segmentation.dcm", hidden: true });
        document.body.append(link);
        link.click();
        link.remove();
      } catch (error) {
        showProblem($("imaging-problem"), error);
      }
    });
  }

  // ------------------------------------------------------------------ A4 risk
  function buildRiskForm() {
    const grid = $("risk-observations");
    for (const o of RISK_OBSERVATIONS) {
      const id = `risk-${o.id}`;
      grid.append(h("label", { for: id }, `${o.label} (${o.unit})`),
        h("input", { id, type: "number", inputmode: "decimal", step: "any", min: "0", "data-feature": o.id }));
    }
    const today = new Date(); // the clinician's calendar day, not UTC's
    $("risk-date").value = [today.getFullYear(), String(today.getMonth() + 1).padStart(2, "0"),
      String(today.getDate()).padStart(2, "0")].join("-");
  }

  /** A FHIR R4 Bundle (collection) of one Patient and one Observation per value entered. */
  function riskBundle() {
    const patient = { resourceType: "Patient", id: "patient", gender: $("risk-sex").value };
    if ($("risk-birth").value) patient.birthDate = $("risk-birth").value;
    const effective = $("risk-date").value;
    const entry = [{ resource: patient }];
    for (const o of RISK_OBSERVATIONS) {
      const raw = $(`risk-${o.id}`).value.trim();
      if (!raw) continue;
      const observation = {
        resourceType: "Observation", id: `obs-${o.id.replace(/_/g, "-")}`, status: "final",
        code: { coding: [{ system: LOINC, code: o.loinc, display: o.label }], text: o.label },
        subject: { reference: "Patient/patient" },
        valueQuantity: { value: Number(raw), unit: o.unit, system: UCUM, code: o.ucum },
      };
      if (effective) observation.effectiveDateTime = effective;
      entry.push({ resource: observation });
    }
    return { resourceType: "Bundle", type: "collection", entry };
  }

  function featureLabel(item) {
    const name = FEATURE_LABELS[item.feature] || humanise(item.feature);
    const value = typeof item.value === "number" ? Number(item.value.toFixed(2)) : item.value;
    return `${name}${value === null || value === undefined ? "" : ` = ${value}`}${item.imputed ? " (imputed)" : ""}`;
  }

  /** A horizontal bar chart of the Shapley contributions, drawn as SVG elements (no chart library). */
  function contributionChart(explanation) {
    const rowHeight = 26, labelWidth = 250, valueWidth = 70, width = 720, top = 8;
    const barArea = width - labelWidth - valueWidth;
    const zero = labelWidth + barArea / 2;
    const largest = Math.max(1e-9, ...explanation.map((e) => Math.abs(Number(e.contribution) || 0)));
    const height = top * 2 + rowHeight * explanation.length;
    const signed = (value, digits) => `${value >= 0 ? "+" : ""}${value.toFixed(digits)}`;
    const spoken = explanation.map((e) => `${FEATURE_LABELS[e.feature] || e.feature} ${signed(Number(e.contribution) || 0, 3)}`);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `Contributions of ${explanation.length} features to the risk: ${spoken.join(", ")}` });
    explanation.forEach((item, index) => {
      const contribution = Number(item.contribution) || 0;
      const y = top + index * rowHeight;
      const length = (Math.abs(contribution) / largest) * (barArea / 2 - 4);
      const group = svg("g", { class: "row", "data-feature": item.feature });
      const baseline = y + rowHeight / 2 + 4;
      group.append(svg("title", {}, `${featureLabel(item)}: ${signed(contribution, 4)}`));
      group.append(svg("text", { x: labelWidth - 8, y: baseline, "text-anchor": "end", class: "label" }, featureLabel(item)));
      group.append(svg("rect", { class: `bar ${contribution >= 0 ? "up" : "down"}`, x: contribution >= 0 ? zero : zero - length,
        y: y + 4, width: Math.max(1, length), height: rowHeight - 8, rx: 2 }));
      group.append(svg("text", { x: width - 4, y: baseline, "text-anchor": "end", class: "value" }, signed(contribution, 3)));
      chart.append(group);
    });
    chart.append(svg("line", { class: "axis", x1: zero, x2: zero, y1: 2, y2: height - 2 }));
    return chart;
  }

  function renderRisk(result) {
    state.risk = result;
    $("risk-probability").textContent = percent(result.probability);
    const level = String(result.risk_level || "");
    $("risk-level").className = `badge ${level}`;
    $("risk-level").textContent = level ? `${level} risk` : "";
    $("risk-threshold").textContent = typeof result.threshold === "number"
      ? `Probability of type 2 diabetes; the model's decision threshold is ${percent(result.threshold)}.` : "";
    $("risk-steps").replaceChildren(...(result.next_steps || []).map((step) => h("li", { "data-step": step.id || "" },
      describeText(step.text), step.evidence ? h("span", { class: "meta" }, ` (${describeText(step.evidence)})`) : "")));
    const chart = $("risk-chart");
    const explanation = Array.isArray(result.explanation) ? result.explanation : [];
    chart.replaceChildren(explanation.length ? contributionChart(explanation)
      : h("p", { class: "meta" }, "No explanation returned."));
    if (typeof result.baseline_probability === "number") {
      chart.append(h("p", { class: "meta" }, `Baseline probability ${percent(result.baseline_probability)}`
        + `${result.explanation_method ? `; ${result.explanation_method}` : ""}.`));
    }
    $("risk-warnings").replaceChildren(...(result.warnings || []).map((w) => h("li", {}, describeText(w.detail || w))));
    const model = result.model || {};
    $("risk-model").textContent = [model.name && `model ${model.name} version ${model.version}`,
      result.rules_version && `guideline rules ${result.rules_version}`, result.cached ? "answer from cache" : ""]
      .filter(Boolean).join(" · ");
    $("risk-feedback-message").textContent = "";
    for (const id of ["risk-agree", "risk-disagree"]) $(id).disabled = !result.result_id;
    $("risk-result").hidden = false;
  }

  async function assessRisk(event) {
    event.preventDefault();
    clearProblem($("risk-problem"));
    await busy($("risk-submit"), async () => {
      try {
        renderRisk(await api("POST", "/v1/diagnosis/risk?explain=true", { json: riskBundle() }));
      } catch (error) {
        $("risk-result").hidden = true;
        showProblem($("risk-problem"), error);
      }
    });
  }

  async function sendFeedback(agreement) {
    if (!state.risk || !state.risk.result_id) return;
    clearProblem($("risk-problem"));
    const buttons = [$("risk-agree"), $("risk-disagree")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const answer = await api("POST", "/v1/feedback",
        { json: { scenario: "diagnosis", result_id: state.risk.result_id, agreement } });
      $("risk-feedback-message").textContent = `Feedback recorded (${agreement}). Thank you.`;
      $("risk-feedback-message").dataset.feedbackId = answer.feedback_id || "";
    } catch (error) {
      buttons.forEach((b) => { b.disabled = false; });
      showProblem($("risk-problem"), error);
    }
  }

  // ------------------------------------------------------------------ wiring
  function start() {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut(""));
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      tab.addEventListener("click", () => selectTab(tab));
      tab.addEventListener("keydown", onTabKey);
    }
    $("triage-form").addEventListener("submit", sendTriage);
    $("triage-new").addEventListener("click", resetTriage);
    $("triage-text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("triage-form").requestSubmit();
      }
    });
    $("note-form").addEventListener("submit", draftNote);
    $("note-edit-form").addEventListener("submit", saveNote);
    $("note-history-button").addEventListener("click", loadHistory);
    $("note-sign-button").addEventListener("click", askSignature);
    $("note-sign-form").addEventListener("submit", signNote);
    $("note-sign-cancel").addEventListener("click", () => { $("note-sign-form").hidden = true; });
    $("imaging-form").addEventListener("submit", submitImaging);
    $("imaging-seg").addEventListener("click", downloadSegmentation);
    buildRiskForm();
    $("risk-form").addEventListener("submit", assessRisk);
    $("risk-agree").addEventListener("click", () => sendFeedback("agree"));
    $("risk-disagree").addEventListener("click", () => sendFeedback("disagree"));
    window.addEventListener("pagehide", revokeBlobs);
  }

  start();
})();
