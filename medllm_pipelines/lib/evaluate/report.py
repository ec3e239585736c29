"""The evaluation report: model against declared baseline, traceable to data and code (V4, V5, V7).

The report is a JSON-ready dict first and an HTML page second, so that the
numbers a reviewer reads are the numbers a machine can check. It holds
aggregates only: no rows, no pseudonyms, no per-patient scores (ROC
thresholds are dropped because each one is some patient's score). The HTML
is one self-contained file: inline CSS, the ROC plot as a base64 PNG, no
external link of any kind, every string escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medllm_pipelines.lib.common.versions import package_versions

REPORT_FORMAT_VERSION = 1
REPORT_JSON_FILENAME = "evaluation_report.json"
REPORT_HTML_FILENAME = "evaluation_report.html"
DEFAULT_REPORTED_PACKAGES = ("medllm-pipelines", "torch", "lightning", "scikit-learn", "numpy", "pandas", "mlflow")

COMPARED_METRICS: tuple[tuple[str, str], ...] = (
    ("roc_auc", "ROC-AUC"),
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity (recall)"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV)"),
    ("f1", "F1"),
)
COUNT_FIELDS: tuple[tuple[str, str], ...] = (
    ("n", "Cases"),
    ("n_positive", "Positive cases"),
    ("prevalence", "Prevalence"),
    ("tp", "True positives"),
    ("fn", "False negatives"),
    ("tn", "True negatives"),
    ("fp", "False positives"),
)
REQUIRED_CONTEXT = ("generated_at", "dataset_version")
# Known keys only: a strict list is what keeps row-level data out of a shared report.
OPTIONAL_CONTEXT = (
    "title",
    "model_name",
    "model_uri",
    "run_ids",
    "dataset_content_hash",
    "evaluation_split",
    "split_sizes",
    "code_version",
    "package_versions",
    "methods",
    "baseline_description",
    "threshold",
    "confidence_intervals",
    "notes",
)


def collect_package_versions(packages: tuple[str, ...] = DEFAULT_REPORTED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that produced the numbers."""
    return package_versions(packages)


def _jsonable(value: Any) -> Any:
    """Plain JSON types; numpy scalars unwrapped, NaN/inf become None (strict JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"report values must be JSON data, got {type(value).__name__}")


def _delta(model_value: float | None, baseline_value: float | None) -> float | None:
    if model_value is None or baseline_value is None:
        return None
    # Rounded so equal metrics differ by 0.0, not by -1e-16 shown as a loss.
    return round(float(model_value) - float(baseline_value), 12)


def _interval(intervals: Mapping[str, Any], side: str, metric: str) -> list[float | None] | None:
    values = intervals.get(side, {}).get(metric)
    if values is None:
        return None
    values = list(values)
    if len(values) != 2:
        raise ValueError(f"confidence interval for {side} {metric} must be [low, high], got {values}")
    return values


def _curve(points: Mapping[str, Any]) -> dict[str, Any]:
    fpr, tpr = list(points.get("fpr", [])), list(points.get("tpr", []))
    if len(fpr) != len(tpr):
        raise ValueError("ROC points need as many FPR as TPR values")
    return {"fpr": fpr, "tpr": tpr, "auc": points.get("auc"), "undefined_reason": points.get("undefined_reason")}


def default_methods_text(threshold: float, evaluation_split: str, intervals: Mapping[str, Any]) -> str:
    """What was computed and how, for a reader who has only the report."""
    text = (
        f"Metrics computed on the held-out {evaluation_split} split, never used for fitting or model selection. "
        f"A case is predicted positive when its predicted probability is >= {threshold:g}. "
        "Sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), precision = TP/(TP+FP), computed with scikit-learn; "
        "a metric with an empty denominator is reported as undefined, not as zero. "
        "ROC-AUC is threshold-free. "
    )
    if intervals:
        text += (
            f"Confidence intervals: {intervals.get('method', 'bootstrap')}, "
            f"{int(round(100 * float(intervals.get('level', 0.95))))}% level, "
            f"{intervals.get('n_boot', '?')} resamples, seed {intervals.get('seed', '?')}; "
            "the interval of the difference is paired (model and baseline on the same resampled cases). "
        )
    return text.strip()


def build_evaluation_report(
    model_metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Any],
    roc_points_model: Mapping[str, Any],
    roc_points_baseline: Mapping[str, Any],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """Model and baseline side by side with everything needed to trace the numbers back.

    `context` takes `generated_at` and `dataset_version` (required) and the
    optional keys in OPTIONAL_CONTEXT; `confidence_intervals` has the shape
    `evaluate_against_baseline` returns. Unknown keys are refused. Both metric
    dicts must come from the same cases at the same threshold.
    """
    unknown = sorted(set(context) - set(REQUIRED_CONTEXT) - set(OPTIONAL_CONTEXT))
    if unknown:
        allowed = sorted(REQUIRED_CONTEXT + OPTIONAL_CONTEXT)
        raise ValueError(f"unknown report context keys {unknown}; allowed: {allowed}")
    missing = [key for key in REQUIRED_CONTEXT if not context.get(key)]
    if missing:
        raise ValueError(f"report context lacks {missing}")
    for key in ("n", "n_positive", "threshold"):
        if model_metrics.get(key) != baseline_metrics.get(key):
            raise ValueError(
                f"model and baseline metrics differ in {key!r} ({model_metrics.get(key)} vs "
                f"{baseline_metrics.get(key)}): they must be computed on the same cases at the same threshold"
            )
    threshold = float(context.get("threshold", model_metrics["threshold"]))
    if threshold != float(model_metrics["threshold"]):
        raise ValueError(f"context threshold {threshold} differs from the metrics' {model_metrics['threshold']}")

    intervals = dict(context.get("confidence_intervals") or {})
    comparison = []
    for key, label in COMPARED_METRICS:
        model_value, baseline_value = model_metrics.get(key), baseline_metrics.get(key)
        comparison.append(
            {
                "metric": key,
                "label": label,
                "model": model_value,
                "baseline": baseline_value,
                "delta": _delta(model_value, baseline_value),
                "model_ci": _interval(intervals, "model", key),
                "baseline_ci": _interval(intervals, "baseline", key),
                "delta_ci": _interval(intervals, "delta", key),
            }
        )
    evaluation_split = str(context.get("evaluation_split", "test"))
    report = {
        "format_version": REPORT_FORMAT_VERSION,
        "title": context.get("title", "Model evaluation report"),
        "generated_at": context["generated_at"],
        "evaluation_split": evaluation_split,
        "threshold": threshold,
        "dataset_version": context["dataset_version"],
        "dataset_content_hash": context.get("dataset_content_hash"),
        "split_sizes": dict(context.get("split_sizes") or {}),
        "model": {
            "name": context.get("model_name"),
            "uri": context.get("model_uri"),
            "run_ids": dict(context.get("run_ids") or {}),
        },
        "baseline": {"description": context.get("baseline_description")},
        "code_version": context.get("code_version"),
        "package_versions": dict(context.get("package_versions") or collect_package_versions()),
        "methods": context.get("methods") or default_methods_text(threshold, evaluation_split, intervals),
        "comparison": comparison,
        "metrics": {"model": dict(model_metrics), "baseline": dict(baseline_metrics)},
        "confidence_intervals": intervals,
        "roc_curves": {"model": _curve(roc_points_model), "baseline": _curve(roc_points_baseline)},
        "notes": dict(context.get("notes") or {}),
    }
    report = _jsonable(report)
    json.dumps(report, allow_nan=False)  # fail here, not in the asset that writes it
    return report


# --- HTML -------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:60rem;
color:#1a1a1a;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f2f2f2}
.pos{color:#0a6b2a}.neg{color:#a11}.muted{color:#666;font-size:.9rem}code{font-size:.9rem}
figure{margin:1rem 0}figcaption{color:#444;font-size:.9rem}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_ci(interval: list[float | None] | None) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    return f" ({_fmt(interval[0], 3)} to {_fmt(interval[1], 3)})"


def _fmt_delta(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}"


def _roc_png_base64(curves: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The ROC plot as base64 PNG, drawn without pyplot so no global backend state is touched."""
    drawable = {name: curve for name, curve in curves.items() if curve.get("fpr")}
    if not drawable:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    styles = {"model": ("#1f5fbf", "-"), "baseline": ("#d9822b", "--")}
    for name, curve in drawable.items():
        colour, line = styles.get(name, ("#444444", "-"))
        auc = curve.get("auc")
        label = f"{name} (AUC {auc:.3f})" if isinstance(auc, (int, float)) else name
        axes.plot(curve["fpr"], curve["tpr"], color=colour, linestyle=line, linewidth=2, label=label)
    axes.plot([0, 1], [0, 1], color="#888888", linestyle=":", linewidth=1, label="chance (AUC 0.5)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    axes.set_title("ROC curve")
    axes.set_aspect("equal")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    # No Software tag: the same report renders to the same bytes across runs.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_values(items: Mapping[str, Any]) -> str:
    if not items:
        return '<p class="muted">none recorded</p>'
    return _table(["Item", "Value"], [[_e(key), f"<code>{_e(value)}</code>"] for key, value in items.items()])


def render_report_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML page: no external CSS, script, font or image; all text escaped."""
    comparison_rows = []
    for row in report["comparison"]:
        delta = row["delta"]
        css = "" if delta is None or delta == 0 else (' class="pos"' if delta > 0 else ' class="neg"')
        comparison_rows.append(
            [
                _e(row["label"]),
                _e(_fmt(row["model"]) + _fmt_ci(row["model_ci"])),
                _e(_fmt(row["baseline"]) + _fmt_ci(row["baseline_ci"])),
                f"<span{css}>{_e(_fmt_delta(delta) + _fmt_ci(row['delta_ci']))}</span>",
            ]
        )
    metrics = report["metrics"]
    count_rows = [
        [_e(label), _e(_fmt(metrics["model"].get(key))), _e(_fmt(metrics["baseline"].get(key)))]
        for key, label in COUNT_FIELDS
    ]
    undefined_items = [
        f"<li>{_e(side)}: {_e(name)}: {_e(reason)}</li>"
        for side in ("model", "baseline")
        for name, reason in (metrics[side].get("undefined") or {}).items()
    ]
    undefined_html = f"<ul>{''.join(undefined_items)}</ul>" if undefined_items else ""

    png = _roc_png_base64(report["roc_curves"])
    if png is None:
        reason = report["roc_curves"]["model"].get("undefined_reason") or "no ROC points"
        roc_html = f"<p>ROC curve not drawn: {_e(reason)}</p>"
    else:
        aucs = ", ".join(
            f"{name} {_fmt(curve.get('auc'), 3)}" for name, curve in report["roc_curves"].items() if curve.get("fpr")
        )
        roc_html = (
            f'<figure><img alt="ROC curves of model and baseline with the chance line; AUC {_e(aucs)}" '
            f'src="data:image/png;base64,{png}" width="550" height="500">'
            f"<figcaption>ROC curves on the {_e(report['evaluation_split'])} split ({_e(aucs)}); "
            "dotted: chance.</figcaption></figure>"
        )

    split_rows = [[_e(name), _e(_fmt(size))] for name, size in report["split_sizes"].items()]
    model = report["model"]
    trace = {
        "Model": model.get("name"),
        "Model URI": model.get("uri"),
        **{f"Run id ({name})": value for name, value in model.get("run_ids", {}).items()},
        "Code version": report.get("code_version"),
        "Dataset version": report.get("dataset_version"),
        "Dataset content hash": report.get("dataset_content_hash"),
    }
    trace = {key: value for key, value in trace.items() if value is not None}
    title = report.get("title") or "Model evaluation report"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="muted">Generated {_e(report.get("generated_at"))} &middot; dataset {_e(report.get("dataset_version"))} &middot;
{_e(report["evaluation_split"])} split &middot; threshold {_e(_fmt(report["threshold"], 3))} &middot;
report format {_e(report.get("format_version"))}</p>

<h2>Model against baseline</h2>
{_table(["Metric", "Model", "Baseline", "Difference (model - baseline)"], comparison_rows)}
<p class="muted">In parentheses: 95% confidence interval, where computed.</p>
{undefined_html}
<h2>Counts at the threshold</h2>
{_table(["", "Model", "Baseline"], count_rows)}

<h2>ROC</h2>
{roc_html}

<h2>Data</h2>
<p>Dataset version <code>{_e(report.get("dataset_version"))}</code>; content hash
<code>{_e(report.get("dataset_content_hash") or "not recorded")}</code>.</p>
{_table(["Split", "Cases"], split_rows) if split_rows else '<p class="muted">split sizes not recorded</p>'}

<h2>Method</h2>
<p>{_e(report.get("methods"))}</p>
<p>Baseline: {_e(report["baseline"].get("description") or "not described")}</p>

<h2>Traceability</h2>
{_key_values(trace)}
<h3>Package versions</h3>
{_key_values(report.get("package_versions") or {})}
{"<h3>Notes</h3>" + _key_values(report["notes"]) if report.get("notes") else ""}
<p class="muted">Aggregate results only: this report holds no patient-level rows or identifiers.</p>
</body>
</html>
"""


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write the JSON (the record) and the HTML (the reading copy) side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / REPORT_JSON_FILENAME
    html_path = out_dir / REPORT_HTML_FILENAME
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_report_html(report), encoding="utf-8")
    return json_path, html_path
