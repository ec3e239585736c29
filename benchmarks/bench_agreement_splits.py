"""Agreement statistics against their references, and split + leakage check on a million rows.

1. Agreement: on random data (several seeds, missing ratings), the project's
   statistics are compared with reference implementations and the largest
   absolute difference is reported (target: 1e-9):
   - pairwise Cohen's kappa vs ``sklearn.metrics.cohen_kappa_score``;
   - Krippendorff's alpha (nominal, via ``label_agreement``) vs ``krippendorff.alpha``;
   - Fleiss' kappa vs an independent per-item loop of Fleiss (1971), vs Cohen's
     kappa on two raters with equal marginals, and vs Krippendorff's alpha
     through the exact two-rater identity alpha = 1 - (2n-1)/(2n)(1-pi);
   - Dice / IoU of masks vs ``sklearn.metrics.f1_score`` / ``jaccard_score``;
   - box IoU vs the IoU of the rasterised boxes.
2. Splits: 1,000,000 image rows of 300,000 patients (3 studies each, 1 %
   near-duplicate keys) assigned to grouped, stratified 70/15/15 splits with
   5 folds, then checked for patient/study/near-duplicate leakage and label
   balance (target: under 60 s on these 2 cores).

    .venv/bin/python benchmarks/bench_agreement_splits.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "agreement_splits.json"


def _fleiss_by_loop(counts: np.ndarray) -> float:
    """Fleiss (1971) written item by item, independent of the vectorised implementation."""
    n_items, n_categories = counts.shape
    n = counts[0].sum()
    p_j = [sum(counts[i][j] for i in range(n_items)) / (n_items * n) for j in range(n_categories)]
    p_i = [(sum(c * c for c in counts[i]) - n) / (n * (n - 1)) for i in range(n_items)]
    p_bar, p_e = sum(p_i) / n_items, sum(p * p for p in p_j)
    return (p_bar - p_e) / (1 - p_e)


def agreement_differences(seeds: int = 20) -> dict:
    import krippendorff
    from sklearn.metrics import cohen_kappa_score, f1_score, jaccard_score

    from medllm_pipelines.lib.label.agreement import (
        box_iou,
        dice,
        fleiss_kappa,
        iou,
        label_agreement,
    )
    from medllm_pipelines.lib.label.images import boxes_to_mask

    worst = {k: 0.0 for k in ("cohen_vs_sklearn", "alpha_vs_krippendorff", "fleiss_vs_loop", "fleiss_vs_cohen_equal_marginals",
                              "fleiss_vs_alpha_two_rater_identity", "dice_vs_sklearn_f1", "iou_vs_sklearn_jaccard", "box_iou_vs_raster")}
    started = time.perf_counter()
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        items, raters, categories = 500, 4, 6
        truth = rng.integers(0, categories, items)
        rows = []
        for r in range(raters):
            given = np.where(rng.random(items) < 0.25 + 0.1 * r, rng.integers(0, categories, items), truth)
            rows += [(f"i{i}", f"r{r}", f"c{given[i]}") for i in range(items) if rng.random() > 0.1]
        long = pd.DataFrame(rows, columns=["item_key", "annotator_id", "label"])
        result = label_agreement(long)
        wide = long.pivot(index="annotator_id", columns="item_key", values="label")
        for pair, kappa in result.pairwise_cohen_kappa.items():
            a, b = pair.split("~")
            both = wide.loc[[a, b]].dropna(axis=1)
            worst["cohen_vs_sklearn"] = max(worst["cohen_vs_sklearn"], abs(kappa - cohen_kappa_score(both.loc[a], both.loc[b])))
        codes = {c: i for i, c in enumerate(sorted(long["label"].unique()))}
        reliability = wide.apply(lambda col, codes=codes: col.map(codes)).to_numpy(dtype=float)
        reference = krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal")
        worst["alpha_vs_krippendorff"] = max(worst["alpha_vs_krippendorff"], abs(result.krippendorff_alpha - reference))
        complete = wide.dropna(axis=1)
        counts = np.zeros((complete.shape[1], categories))
        for j, column in enumerate(complete.columns):
            for value in complete[column]:
                counts[j, codes[value]] += 1
        worst["fleiss_vs_loop"] = max(worst["fleiss_vs_loop"], abs(result.fleiss_kappa - _fleiss_by_loop(counts)))
        # two raters with equal marginals: Fleiss (Scott's pi) == Cohen
        first = rng.integers(0, 4, 400)
        second = first.copy()
        swap = rng.choice(400, 100, replace=False)
        second[swap[:50]], second[swap[50:]] = first[swap[50:]], first[swap[:50]]
        pair_counts = np.zeros((400, 4))
        np.add.at(pair_counts, (np.arange(400), first), 1)
        np.add.at(pair_counts, (np.arange(400), second), 1)
        pi = fleiss_kappa(pair_counts)
        worst["fleiss_vs_cohen_equal_marginals"] = max(worst["fleiss_vs_cohen_equal_marginals"], abs(pi - cohen_kappa_score(first, second)))
        alpha2 = krippendorff.alpha(reliability_data=np.vstack([first, second]).astype(float), level_of_measurement="nominal")
        worst["fleiss_vs_alpha_two_rater_identity"] = max(worst["fleiss_vs_alpha_two_rater_identity"], abs(alpha2 - (1 - (799 / 800) * (1 - pi))))
        a, b = rng.random((64, 64)) < 0.2, rng.random((64, 64)) < 0.25
        worst["dice_vs_sklearn_f1"] = max(worst["dice_vs_sklearn_f1"], abs(dice(a, b) - f1_score(a.ravel(), b.ravel())))
        worst["iou_vs_sklearn_jaccard"] = max(worst["iou_vs_sklearn_jaccard"], abs(iou(a, b) - jaccard_score(a.ravel(), b.ravel())))
        box1 = tuple(float(v) for v in (*rng.integers(0, 30, 2), *rng.integers(1, 30, 2)))
        box2 = tuple(float(v) for v in (*rng.integers(0, 30, 2), *rng.integers(1, 30, 2)))
        raster = iou(boxes_to_mask([box1], (64, 64)), boxes_to_mask([box2], (64, 64)))
        overlap = box_iou(box1, box2)
        if not np.isnan(raster):
            worst["box_iou_vs_raster"] = max(worst["box_iou_vs_raster"], abs(overlap - raster))
    return {
        "seeds": seeds,
        "items_per_seed": 500,
        "annotators": 4,
        "max_abs_difference": {k: float(v) for k, v in worst.items()},
        "all_within_1e-9": all(v <= 1e-9 for v in worst.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def split_timing(rows: int) -> dict:
    from medllm_pipelines.lib.curate.splits import (
        SplitConfig,
        assign_split_rows,
        check_leakage,
    )

    rng = np.random.default_rng(0)
    patients = rng.integers(0, rows * 3 // 10, rows)
    frame = pd.DataFrame({
        "patient_pseudonym": np.char.add("p_", patients.astype(str)),
        "study_key": np.char.add("s_", (patients * 3 + rng.integers(0, 3, rows)).astype(str)),
        "near_duplicate_key": np.where(rng.random(rows) < 0.01, np.char.add("d_", rng.integers(0, rows // 200, rows).astype(str)), None),
        "label": (rng.random(rows) < 0.2).astype(int),
    })
    config = SplitConfig(seed=1, together=("study_key", "near_duplicate_key"), k_folds=5)
    started = time.perf_counter()
    splits = assign_split_rows(frame, config)
    assigned = time.perf_counter()
    report = check_leakage(splits, ("patient_pseudonym", "study_key", "near_duplicate_key"))
    checked = time.perf_counter()
    return {
        "rows": rows,
        "patients": int(frame["patient_pseudonym"].nunique()),
        "config": config.as_dict(),
        "assign_seconds": round(assigned - started, 2),
        "leakage_check_seconds": round(checked - assigned, 2),
        "total_seconds": round(checked - started, 2),
        "under_60_s": checked - started < 60,
        "leakage_passed": report.passed,
        "crossing_by_key": report.crossing_by_key,
        "rows_per_split": report.rows_per_split,
        "label_share_per_split": report.label_share_per_split,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    load_start = os.getloadavg()
    result = {
        "benchmark": "agreement_splits",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus_visible": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(load_start)},
        "agreement": agreement_differences(args.seeds),
        "splits": split_timing(args.rows),
    }
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"agreement": result["agreement"]["max_abs_difference"], "splits": {
        k: result["splits"][k] for k in ("rows", "assign_seconds", "leakage_check_seconds", "total_seconds", "leakage_passed")}}, indent=2))


if __name__ == "__main__":
    main()
