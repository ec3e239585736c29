"""Per-person feature table built from de-identified tables only."""

from __future__ import annotations

import pandas as pd

from medllm_pipelines.lib.curate.spec import ModelSpec


def age_band_midpoint(band: str | None) -> float | None:
    """Generalised age back to a number: ``45-49`` -> 47.5, ``90+`` -> 92.5."""
    if not isinstance(band, str) or not band:
        return None
    if band.endswith("+"):
        return float(band[:-1]) + 2.5
    low, high = band.split("-")
    return (float(low) + float(high) + 1) / 2


def build_features(
    labels: pd.DataFrame, patients: pd.DataFrame, observations: pd.DataFrame, spec: ModelSpec
) -> pd.DataFrame:
    """One row per labelled person: demographics + aggregated vitals/labs (NaN where never measured).

    Imputation is deliberately *not* done here: it is fitted on the training
    split only, inside the model's preprocessing pipeline.
    """
    people = patients.sort_values(["patient_pseudonym", "institution"]).drop_duplicates("patient_pseudonym")
    frame = labels[["patient_pseudonym", "label"]].merge(
        people[["patient_pseudonym", "sex", "age_band"]], on="patient_pseudonym", how="left"
    )
    frame["age_years"] = frame["age_band"].map(age_band_midpoint)
    wanted = [c for c in spec.numeric_features if c != "age_years"]
    obs = observations[observations["concept"].isin(wanted)]
    if len(obs):
        wide = obs.pivot_table(
            index="patient_pseudonym", columns="concept", values="value", aggfunc=spec.aggregation
        )
    else:
        wide = pd.DataFrame(index=pd.Index([], name="patient_pseudonym"))
    for concept in wanted:
        if concept not in wide.columns:
            wide[concept] = float("nan")
    frame = frame.merge(wide[wanted].reset_index(), on="patient_pseudonym", how="left")
    if "bmi" in wanted and {"body_weight", "body_height"} <= set(observations["concept"]):
        missing = frame["bmi"].isna()
        if missing.any():
            anthropometry = observations[observations["concept"].isin(["body_weight", "body_height"])].pivot_table(
                index="patient_pseudonym", columns="concept", values="value", aggfunc="median"
            )
            derived = anthropometry["body_weight"] / (anthropometry["body_height"] / 100.0) ** 2
            frame.loc[missing, "bmi"] = frame.loc[missing, "patient_pseudonym"].map(derived).round(2)
    frame["sex"] = frame["sex"].fillna("unknown")
    columns = ["patient_pseudonym", *spec.numeric_features, *spec.categorical_features, "label"]
    return frame[columns].sort_values("patient_pseudonym").reset_index(drop=True)
