"""Data classification by disease type, age band and sex (clause 5.1.4.3, row D11).

Every consented person is classified along three axes: sex and age band
(from the de-identified demographics) and disease type. The disease type is
the human classification where one exists (the accepted triage label of the
person's pre-consultation dialogue: the clinical area of the presenting
complaint); elsewhere it is predicted by a random forest trained on the
human-classified persons from structured data (ICD-10 categories, age band,
sex, lab medians). A decision tree is fitted next to it, and the accuracy of
both against the human classification is measured by cross-validation,
next to the majority-class baseline, so a reader knows how far the
automatic classes can be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.curate.features import age_band_midpoint

ICD10_CHAPTERS = {  # first letter -> chapter (WHO ICD-10)
    "A": "infectious", "B": "infectious", "C": "neoplasms", "D": "blood_or_neoplasms", "E": "endocrine_metabolic",
    "F": "mental", "G": "nervous", "H": "eye_ear", "I": "circulatory", "J": "respiratory", "K": "digestive",
    "L": "skin", "M": "musculoskeletal", "N": "genitourinary", "O": "pregnancy", "R": "symptoms_signs",
    "S": "injury", "T": "injury", "Z": "health_services",
}
LAB_FEATURES = ("hba1c", "fasting_glucose", "bmi", "systolic_bp", "total_cholesterol")
HUMAN, RANDOM_FOREST, UNCLASSIFIED = "human", "random_forest", "unclassified"
CLASSIFICATION_COLUMNS = [
    "patient_pseudonym", "institutions", "sex", "age_band", "icd10_chapters", "disease_type", "disease_type_source",
    "human_disease_type", "decision_tree_prediction", "random_forest_prediction",
]


def feature_matrix(persons: pd.DataFrame, conditions: pd.DataFrame, observations: pd.DataFrame) -> pd.DataFrame:
    """Per person: ICD-10 category indicators, age (band midpoint), sex indicators, lab medians (NaN filled by median)."""
    index = pd.Index(sorted(persons["patient_pseudonym"].unique()), name="patient_pseudonym")
    categories = (
        pd.crosstab(conditions["patient_pseudonym"], "icd10:" + conditions["icd10_category"].astype(str)).clip(upper=1)
        if len(conditions) else pd.DataFrame(index=index)
    )
    demo = persons.drop_duplicates("patient_pseudonym").set_index("patient_pseudonym")
    age = demo["age_band"].map(age_band_midpoint).astype(float).rename("age_years")
    sex = pd.get_dummies(demo["sex"].fillna("unknown"), prefix="sex").astype(int)
    labs = (
        observations[observations["concept"].isin(LAB_FEATURES)]
        .pivot_table(index="patient_pseudonym", columns="concept", values="value", aggfunc="median")
        if len(observations) else pd.DataFrame(index=index)
    )
    matrix = pd.concat([categories.reindex(index).fillna(0), age.reindex(index), sex.reindex(index).fillna(0),
                        labs.reindex(index=index, columns=list(LAB_FEATURES))], axis=1)
    matrix.columns = [str(c) for c in matrix.columns]
    return matrix.fillna(matrix.median(numeric_only=True)).fillna(0.0)


@dataclass
class ClassifierReport:
    labelled: int
    classes: list[str]
    folds: int
    decision_tree_accuracy: float | None
    random_forest_accuracy: float | None
    decision_tree_macro_f1: float | None
    random_forest_macro_f1: float | None
    majority_class_accuracy: float | None
    feature_importance: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def cross_validated(matrix: pd.DataFrame, human: pd.Series, seed: int) -> tuple[ClassifierReport, Any]:
    """Accuracy of a decision tree and a random forest against the human classes (k-fold CV)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    labelled = human.dropna()
    x, y = matrix.loc[labelled.index].to_numpy(dtype=float), labelled.astype(str).to_numpy()
    classes = sorted(set(y))
    forest = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1)
    tree = DecisionTreeClassifier(max_depth=5, min_samples_leaf=2, random_state=seed)
    if len(y) < 6 or len(classes) < 2:
        report = ClassifierReport(len(y), classes, 0, None, None, None, None,
                                  _round(pd.Series(y).value_counts(normalize=True).max()) if len(y) else None)
        return report, (forest.fit(x, y) if len(classes) >= 2 else None)
    smallest = int(pd.Series(y).value_counts().min())
    folds = max(2, min(5, len(y) // 3))
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if smallest >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    tree_pred = cross_val_predict(tree, x, y, cv=splitter)
    forest_pred = cross_val_predict(forest, x, y, cv=splitter)
    forest.fit(x, y)
    importance = sorted(zip(matrix.columns, forest.feature_importances_, strict=True), key=lambda kv: -kv[1])[:10]
    report = ClassifierReport(
        labelled=len(y),
        classes=classes,
        folds=folds,
        decision_tree_accuracy=_round(accuracy_score(y, tree_pred)),
        random_forest_accuracy=_round(accuracy_score(y, forest_pred)),
        decision_tree_macro_f1=_round(f1_score(y, tree_pred, average="macro", zero_division=0)),
        random_forest_macro_f1=_round(f1_score(y, forest_pred, average="macro", zero_division=0)),
        majority_class_accuracy=_round(pd.Series(y).value_counts(normalize=True).max()),
        feature_importance={str(k): round(float(v), 4) for k, v in importance},
    )
    return report, forest


def classify_persons(
    persons: pd.DataFrame,
    conditions: pd.DataFrame,
    observations: pd.DataFrame,
    human_labels: pd.DataFrame,
    seed: int = 0,
) -> tuple[pd.DataFrame, ClassifierReport]:
    """One row per person: sex, age band, ICD-10 chapters and disease type (human, else random forest)."""
    from sklearn.tree import DecisionTreeClassifier

    matrix = feature_matrix(persons, conditions, observations)
    human = (
        human_labels.sort_values(["patient_pseudonym", "item_key"]).drop_duplicates("patient_pseudonym")
        .set_index("patient_pseudonym")["label"].reindex(matrix.index)
        if len(human_labels) else pd.Series(index=matrix.index, dtype=object)
    )
    report, forest = cross_validated(matrix, human, seed)
    labelled = human.dropna()
    tree_pred = pd.Series(None, index=matrix.index, dtype=object)
    forest_pred = pd.Series(None, index=matrix.index, dtype=object)
    if forest is not None:
        forest_pred[:] = forest.predict(matrix.to_numpy(dtype=float))
        tree = DecisionTreeClassifier(max_depth=5, min_samples_leaf=2, random_state=seed)
        tree.fit(matrix.loc[labelled.index].to_numpy(dtype=float), labelled.astype(str).to_numpy())
        tree_pred[:] = tree.predict(matrix.to_numpy(dtype=float))
    demo = persons.sort_values(["patient_pseudonym", "institution"]).groupby("patient_pseudonym").agg(
        institutions=("institution", lambda s: ",".join(sorted(set(s)))), sex=("sex", "first"), age_band=("age_band", "first")
    )
    chapters = (
        conditions.assign(chapter=conditions["icd10_category"].astype(str).str[0].map(ICD10_CHAPTERS).fillna("other"))
        .groupby("patient_pseudonym")["chapter"].agg(lambda s: ",".join(sorted(set(s))))
        if len(conditions) else pd.Series(dtype=object)
    )
    frame = demo.reindex(matrix.index)
    frame["icd10_chapters"] = chapters.reindex(matrix.index).fillna("none")
    frame["human_disease_type"] = human
    frame["decision_tree_prediction"] = tree_pred
    frame["random_forest_prediction"] = forest_pred
    frame["disease_type"] = human.where(human.notna(), forest_pred)
    frame["disease_type_source"] = np.where(human.notna(), HUMAN, np.where(forest_pred.notna(), RANDOM_FOREST, UNCLASSIFIED))
    frame["disease_type"] = frame["disease_type"].fillna(UNCLASSIFIED)
    frame["sex"] = frame["sex"].fillna("unknown")
    return frame.reset_index()[CLASSIFICATION_COLUMNS], report


def class_counts(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts by disease type, age band, sex and their combination (the classification a reader browses)."""
    combined = frame.groupby(["disease_type", "age_band", "sex"], dropna=False).size()
    nested: dict[str, dict[str, dict[str, int]]] = {}
    for (disease, band, sex), n in combined.items():
        nested.setdefault(str(disease), {}).setdefault(str(band), {})[str(sex)] = int(n)
    return {
        "by_disease_type": {str(k): int(v) for k, v in frame["disease_type"].value_counts().sort_index().items()},
        "by_age_band": {str(k): int(v) for k, v in frame["age_band"].value_counts().sort_index().items()},
        "by_sex": {str(k): int(v) for k, v in frame["sex"].value_counts().sort_index().items()},
        "by_disease_type_age_band_sex": nested,
    }


@dataclass(frozen=True)
class ConsentedClassification:
    """Persons with granted consent, classified; the rest counted, never classified."""

    frame: pd.DataFrame
    report: ClassifierReport
    persons_in: int

    def as_metadata(self) -> dict[str, Any]:
        removed = self.persons_in - len(self.frame)
        return {
            "records_in": self.persons_in,
            "records_out": len(self.frame),
            "removed[no_granted_consent]": removed,
            "reconciled": self.persons_in == len(self.frame) + removed and removed >= 0,
            "classes": class_counts(self.frame),
            "classifier_vs_human": self.report.as_dict(),
            "decision_tree_accuracy": self.report.decision_tree_accuracy,
            "random_forest_accuracy": self.report.random_forest_accuracy,
            "majority_class_accuracy": self.report.majority_class_accuracy,
        }


def classify_consented_persons(
    patients: pd.DataFrame,
    consent: pd.DataFrame,
    conditions: pd.DataFrame,
    observations: pd.DataFrame,
    human: pd.DataFrame,
    seed: int,
) -> ConsentedClassification:
    """Only persons whose consent is granted are classified, on their own records only."""
    granted = set(consent.loc[consent["consent_status"] == "granted", "patient_pseudonym"])
    frame, report = classify_persons(
        patients[patients["patient_pseudonym"].isin(granted)],
        conditions[conditions["patient_pseudonym"].isin(granted)],
        observations[observations["patient_pseudonym"].isin(granted)],
        human[["item_key", "patient_pseudonym", "label"]],
        seed=seed,
    )
    return ConsentedClassification(frame, report, int(patients["patient_pseudonym"].nunique()))
