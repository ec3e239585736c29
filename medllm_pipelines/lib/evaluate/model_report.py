"""The evaluation report of one model version (issue 12 item 10, row V7): JSON, HTML and PDF with the same content.

Sections, each naming the clause of T/HBSEA 013-2024 it serves: identity and traceability (data, code and model
versions, MLflow and Dagster run ids), methods, metrics with bootstrap intervals next to the baseline and the
paired deltas, curves (ROC, precision-recall, calibration, decision curve, confusion matrix), subgroups, membership
inference, the promotion gate with every threshold and value, the family's sections (robustness, explanations,
canaries, validation, public benchmarks) and the limits of what was measured. The HTML embeds its figures; the PDF
(reportlab) draws the same figures and tables. The SHA-256 of each file is recorded in the JSON written last
and returned, so that the asset metadata and the MLflow run name the exact bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.common.files import write_private_atomic
from medllm_pipelines.lib.evaluate.engine import ModelEvaluation
from medllm_pipelines.lib.evaluate.outputs import Figure, ReportSection, Table, jsonable

REPORT_FORMAT_VERSION = "2"
CLAUSES = {
    "identity": "5.3.3 transparent, traceable report (V7)",
    "methods": "5.3.2 validation methods (V3)",
    "metrics": "5.3.1 metrics (V1, V2); 5.3.2 bootstrap (V3); baselines (V5)",
    "curves": "5.3.1 ROC and calibration (V4)",
    "fairness": "5.3.1 subgroup performance (V1)",
    "membership": "5.4.3 privacy of the model (S-rows): membership inference",
    "gate": "5.3.3 release decision (V7)",
}


@dataclass(frozen=True)
class ReportFiles:
    json_path: Path
    html_path: Path
    pdf_path: Path
    sha256: dict[str, str]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.{digits}f}, {value[1]:.{digits}f}]"
    return str(value)


# ----------------------------------------------------------------------------------------------- figures
def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _figure(title: str, draw: Any, caption: str = "", size: tuple[float, float] = (4.6, 3.4)) -> Figure | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        if draw(ax) is False:
            plt.close(fig)
            return None
    except (KeyError, TypeError, ValueError):
        plt.close(fig)
        return None
    ax.set_title(title, fontsize=10)
    return Figure(title, _png(fig), caption)


def standard_figures(evaluation: ModelEvaluation) -> list[Figure]:
    """ROC, PR, reliability and decision curves (binary), reliability (multiclass), subgroup bars (all tasks)."""
    figures: list[Figure] = []
    curves = evaluation.curves

    def lines(kind: str, x: str, y: str, xlabel: str, ylabel: str, diagonal: bool = False) -> Any:
        def draw(ax: Any) -> bool:
            drawn = False
            for side, entry in curves.items():
                points = entry.get(kind)
                if points and points.get(x):
                    ax.plot(points[x], points[y], label=f"{side}")
                    drawn = True
            if diagonal:
                ax.plot([0, 1], [0, 1], ls=":", color="grey")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if drawn:
                ax.legend(fontsize=8)
            return drawn
        return draw

    if evaluation.task == "binary":
        figures += [f for f in (
            _figure("ROC (test)", lines("roc", "fpr", "tpr", "1 - specificity", "sensitivity", True)),
            _figure("Precision-recall (test)", lines("pr", "recall", "precision", "recall", "precision")),
        ) if f]

        def decision(ax: Any) -> bool:
            model = curves.get("model", {}).get("decision_curve")
            if not model:
                return False
            for side, entry in curves.items():
                points = entry.get("decision_curve")
                if points:
                    ax.plot(points["thresholds"], points["net_benefit_model"], label=side)
            ax.plot(model["thresholds"], model["net_benefit_treat_all"], ls="--", color="grey", label="treat all")
            ax.axhline(0, ls=":", color="black", label="treat none")
            ax.set_ylim(bottom=-0.05)
            ax.set_xlabel("threshold probability")
            ax.set_ylabel("net benefit")
            ax.legend(fontsize=8)
            return True

        figure = _figure("Decision curve (test)", decision)
        figures += [figure] if figure else []

    def reliability(ax: Any) -> bool:
        drawn = False
        for side, entry in curves.items():
            bins = [b for b in (entry.get("reliability") or {}).get("bins", []) if b.get("count")]
            if bins:
                ax.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], marker="o",
                        label=side)
                drawn = True
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.set_xlabel("predicted probability" if evaluation.task == "binary" else "top-class confidence")
        ax.set_ylabel("observed rate" if evaluation.task == "binary" else "accuracy")
        if drawn:
            ax.legend(fontsize=8)
        return drawn

    figure = _figure(f"Calibration (ECE {_fmt(evaluation.calibration.get('ece'), 3)})", reliability)
    figures += [figure] if figure else []

    primary = evaluation.primary_metric
    attributes = (evaluation.fairness.get("attributes") or {})

    def subgroups(ax: Any) -> bool:
        labels, values = [], []
        for name, frame in attributes.items():
            for group in frame.get("groups", []):
                value = (group.get("values") or {}).get(primary)
                if value is not None:
                    labels.append(f"{name}={'/'.join(str(v) for v in group.get('key', {}).values())} "
                                  f"(n={group.get('size')})")
                    values.append(value)
        if not values:
            return False
        ax.barh(labels, values, color="#4c72b0")
        overall = evaluation.model_value(primary)
        if overall is not None:
            ax.axvline(overall, ls="--", color="black", label="overall")
            ax.legend(fontsize=8)
        ax.set_xlabel(primary)
        ax.tick_params(axis="y", labelsize=7)
        return True

    figure = _figure(f"{primary} per subgroup (test)", subgroups, size=(5.6, 3.6))
    figures += [figure] if figure else []
    return figures


# ----------------------------------------------------------------------------------------------- content
def _metric_table(evaluation: ModelEvaluation) -> Table:
    model = evaluation.metrics.get("model", {})
    baseline = evaluation.metrics.get("baseline", {})
    rows = []
    for name, value in model.get("values", {}).items():
        interval = evaluation.intervals.get("model", {}).get(name, {})
        delta = evaluation.deltas.get(name, {})
        rows.append((
            name, _fmt(value) if value is not None else f"undefined: {model.get('undefined', {}).get(name, '')}",
            _fmt(interval.get("percentile")), _fmt(interval.get("bca")),
            _fmt(baseline.get("values", {}).get(name)) if baseline else "no baseline",
            _fmt(delta.get("estimate")) if delta else "", _fmt(delta.get("percentile")) if delta else "",
        ))
    return Table("Test metrics with 95 % bootstrap intervals, model vs baseline",
                 ("metric", "model", "95 % CI (percentile)", "95 % CI (BCa)", "baseline", "model - baseline",
                  "delta 95 % CI"), tuple(rows))


def _gate_table(evaluation: ModelEvaluation) -> Table:
    gate = evaluation.gate.as_metadata()
    rows = tuple((c["name"], _fmt(c["value"]), f"{c['comparison']} {_fmt(c['limit'])}",
                  "pass" if c["passed"] else "FAIL", c["reason"]) for c in gate["criteria"])
    if not rows:
        rows = (("gate", "", "", "FAIL", gate["reason"]),)
    return Table(f"Promotion gate: {'PASSED' if evaluation.gate.passed else 'FAILED'}",
                 ("criterion", "value", "threshold", "result", "reason"), rows)


def _fairness_table(evaluation: ModelEvaluation) -> Table | None:
    primary = evaluation.primary_metric
    rows = []
    for name, frame in (evaluation.fairness.get("attributes") or {}).items():
        gap = (frame.get("gaps") or {}).get(primary) or {}
        for group in frame.get("groups", []):
            rows.append((name, "/".join(str(v) for v in group.get("key", {}).values()), group.get("size"),
                         _fmt((group.get("values") or {}).get(primary))))
        rows.append((name, "largest gap", "", _fmt(gap.get("difference"))
                     if gap.get("difference") is not None else f"undefined: {gap.get('reason')}"))
    if not rows:
        return None
    return Table(f"{primary} per subgroup (test)", ("attribute", "group", "n", primary), tuple(rows))


def build_report(evaluation: ModelEvaluation, trace: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON report: the evaluation, the trace (versions, run ids) and the clause of each section."""
    return jsonable({
        "format_version": REPORT_FORMAT_VERSION,
        "title": f"Evaluation of {evaluation.model_name} v{evaluation.model_version} (spec {evaluation.spec_id})",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset_version": trace.get("dataset_version"),
        "trace": dict(trace),
        "clauses": CLAUSES,
        "methods": methods_text(evaluation),
        **evaluation.as_dict(),
    })


def methods_text(evaluation: ModelEvaluation) -> str:
    threshold = evaluation.threshold
    parts = [
        f"Hold-out evaluation on the test split ({evaluation.counts.get('test')} rows; train "
        f"{evaluation.counts.get('train')}, validation {evaluation.counts.get('validation')}), split by person "
        "before any fitting. Every metric has a 95 % bootstrap interval (percentile and BCa, rows resampled"
        f"{', stratified by class' if evaluation.task == 'binary' else ''}); the baseline "
        f"({evaluation.baseline_name or 'none declared'}) is scored on the same rows and the model - baseline "
        "deltas are paired (both on the same resampled rows).",
    ]
    if threshold.get("threshold") is not None and evaluation.task == "binary":
        parts.append(f"The decision threshold {_fmt(threshold.get('threshold'))} was chosen on the "
                     f"{threshold.get('chosen_on') or 'default'} split ({threshold.get('rule')}), never on test.")
    parts.append("Subgroups: fairlearn MetricFrame per sex, age band and institution; groups smaller than "
                 f"{evaluation.fairness.get('min_group_size', 'the declared size')} rows are shown but not gated. "
                 "Membership inference: loss-threshold attack (Yeom et al. 2018), training rows vs test rows.")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- HTML
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:64rem;color:#1a1a1a;
line-height:1.45}h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left}thead th{background:#f2f2f2}.clause{color:#666;font-size:.85rem}.pass{color:#0a6b2a}
.fail{color:#a11;font-weight:bold}figure{display:inline-block;margin:.5rem}figcaption{font-size:.85rem;color:#444}
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v) if not isinstance(v, str) else v)}</td>"
                                    for v in row) + "</tr>" for row in table.rows)
    return f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode()
    return (f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(figure.title)}{(': ' + html.escape(figure.caption)) if figure.caption else ''}"
            "</figcaption></figure>")


def _key_values(items: Mapping[str, Any]) -> Table:
    rows = []
    for key, value in items.items():
        if isinstance(value, (Mapping, list)) and not (isinstance(value, list) and len(value) <= 4):
            value = json.dumps(jsonable(value), sort_keys=True)[:300]
        rows.append((str(key), _fmt(value)))
    return Table("", ("item", "value"), tuple(rows))


def _blocks(report: Mapping[str, Any], evaluation: ModelEvaluation, figures: Sequence[Figure],
            sections: Sequence[ReportSection]) -> list[tuple[str, str, list[Table], list[Figure], str]]:
    """(title, clause, tables, figures, text) per report section, shared by the HTML and the PDF."""
    trace = report.get("trace", {})
    blocks = [
        ("Model, data and code", CLAUSES["identity"], [_key_values({
            "model": f"{evaluation.model_name} v{evaluation.model_version}", "spec": evaluation.spec_id,
            "task": evaluation.task, **trace})], [], ""),
        ("Methods", CLAUSES["methods"], [], [], report.get("methods", "")),
        ("Metrics and baseline", CLAUSES["metrics"], [_metric_table(evaluation)], [], ""),
        ("Curves and calibration", CLAUSES["curves"],
         [_key_values({"threshold": evaluation.threshold, **evaluation.calibration})], list(figures), ""),
    ]
    fairness = _fairness_table(evaluation)
    blocks.append(("Subgroups", CLAUSES["fairness"], [fairness] if fairness else [], [],
                   "" if fairness else str(evaluation.fairness.get("reason", ""))))
    blocks.append(("Membership inference", CLAUSES["membership"], [_key_values(evaluation.membership)], [], ""))
    for section in sections:
        tables = ([_key_values(section.summary)] if section.summary else []) + list(section.tables)
        blocks.append((section.title, section.clause, tables, list(section.figures), section.text))
    blocks.append(("Promotion gate", CLAUSES["gate"], [_gate_table(evaluation)], [], evaluation.gate.summary()))
    if evaluation.limits:
        blocks.append(("Limits of this evaluation", CLAUSES["identity"], [], [],
                       " ".join(f"({i}) {text}" for i, text in enumerate(evaluation.limits, 1))))
    return blocks


def render_html(report: Mapping[str, Any], blocks: Sequence[tuple]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(report['title'])}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(report['title'])}</h1>"
             f"<p class=clause>generated {html.escape(report['generated_at'])}; report format "
             f"{REPORT_FORMAT_VERSION}</p>"]
    for title, clause, tables, figures, text in blocks:
        parts.append(f"<h2>{html.escape(title)}</h2><p class=clause>{html.escape(clause)}</p>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        parts.extend(_html_table(t) for t in tables)
        parts.extend(_html_figure(f) for f in figures)
    parts.append("</body></html>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- PDF
def render_pdf(report: Mapping[str, Any], blocks: Sequence[tuple]) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer
    from reportlab.platypus import Table as PdfTable
    from reportlab.platypus import TableStyle

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7, leading=8.5)
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=1.5 * cm, rightMargin=1.5 * cm,
                            title=report["title"], author="medllm-pipelines", invariant=1)
    story: list[Any] = [Paragraph(html.escape(report["title"]), styles["Title"]),
                        Paragraph(f"generated {html.escape(report['generated_at'])}", small)]
    width = A4[0] - 3 * cm
    for title, clause, tables, figures, text in blocks:
        story += [Paragraph(html.escape(title), styles["Heading2"]), Paragraph(html.escape(clause), small)]
        if text:
            story.append(Paragraph(html.escape(text), styles["BodyText"]))
        for table in tables:
            if table.title:
                story.append(Paragraph(html.escape(table.title), styles["Heading4"]))
            data = [[Paragraph(html.escape(str(h)), small) for h in table.headers]]
            data += [[Paragraph(html.escape(_fmt(v) if not isinstance(v, str) else v), small) for v in row]
                     for row in table.rows[:60]]
            pdf_table = PdfTable(data, colWidths=[width / max(1, len(table.headers))] * len(table.headers),
                                 repeatRows=1)
            pdf_table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                                           ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                                           ("VALIGN", (0, 0), (-1, -1), "TOP")]))
            story += [pdf_table, Spacer(1, 4)]
        for figure in figures:
            image = Image(io.BytesIO(figure.png))
            scale = min(1.0, (width * 0.75) / image.drawWidth)
            image.drawWidth, image.drawHeight = image.drawWidth * scale, image.drawHeight * scale
            story += [image, Paragraph(html.escape(figure.title), small)]
    doc.build(story)
    return buffer.getvalue()


def write_model_report(evaluation: ModelEvaluation, trace: Mapping[str, Any], out_dir: str | Path,
                       extra_sections: Sequence[ReportSection] = ()) -> ReportFiles:
    """report.json, report.html and report.pdf in ``out_dir`` (0600 files); the JSON names the others' SHA-256."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [*evaluation.sections, *extra_sections]
    report = build_report(evaluation, trace)
    report["sections"] = [s.as_dict() for s in sections]
    blocks = _blocks(report, evaluation, standard_figures(evaluation), sections)
    html_text = render_html(report, blocks)
    pdf_bytes = render_pdf(report, blocks)
    html_path, pdf_path, json_path = out / "report.html", out / "report.pdf", out / "report.json"
    write_private_atomic(html_path, html_text)
    write_private_atomic(pdf_path, pdf_bytes)
    digests = {"html": hashlib.sha256(html_text.encode()).hexdigest(), "pdf": hashlib.sha256(pdf_bytes).hexdigest()}
    report["content_sha256"] = digests
    write_private_atomic(json_path, json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    return ReportFiles(json_path, html_path, pdf_path, digests)
