"""Asset keys, group names and check names: constants, never repeated strings."""


from dagster import AssetKey

from medllm_pipelines.lib.ingest.intake import LEDGER_SCHEMA, LEDGER_TABLE

INGEST = "ingest"
QUALITY = "quality"
DEIDENTIFY = "deidentify"
LABEL = "label"
CURATE = "curate"
TRAIN = "train"
EVALUATE = "evaluate"
DEPLOY = "deploy"
STAGES = (INGEST, QUALITY, DEIDENTIFY, LABEL, CURATE, TRAIN, EVALUATE, DEPLOY)


def key(stage: str, name: str) -> AssetKey:
    return AssetKey([stage, name])


def asset_name(asset_key: AssetKey) -> str:
    return "/".join(asset_key.path)


def raw_table_name(asset_key: AssetKey) -> str:
    """Raw-zone table file name of an identifiable asset."""
    return "_".join(asset_key.path)


def warehouse_location(asset_key: AssetKey) -> tuple[str, str]:
    """De-identified assets live in schema ``<stage>``, table ``<name>``."""
    return asset_key.path[0], asset_key.path[1]


# model specs (lib/curate/specs/<id>.yaml) the wiring builds datasets, models and reports for
DIABETES_SPEC_ID = "t2d_risk"
LESION_SPEC_ID = "lesion_segmentation"


# ingest
LANDED_FILES = key(INGEST, "landed_files")
RAW_PATIENTS = key(INGEST, "patients")
RAW_ENCOUNTERS = key(INGEST, "encounters")
RAW_CONDITIONS = key(INGEST, "conditions")
RAW_OBSERVATIONS = key(INGEST, "observations")
RAW_MEDICATION_REQUESTS = key(INGEST, "medication_requests")
RAW_NOTES = key(INGEST, "notes")
RAW_CONSENTS = key(INGEST, "consents")
RAW_DIAGNOSTIC_REPORTS = key(INGEST, "diagnostic_reports")
RAW_PROCEDURES = key(INGEST, "procedures")
RAW_ALLERGY_INTOLERANCES = key(INGEST, "allergy_intolerances")
RAW_IMMUNIZATIONS = key(INGEST, "immunizations")
RAW_DICOM_INSTANCES = key(INGEST, "dicom_instances")
RAW_DICOM_FRAMES = key(INGEST, "dicom_frames")
RAW_DIALOGUES = key(INGEST, "dialogues")
RAW_ANNOTATIONS = key(INGEST, "annotations")
DAILY_ARRIVALS = key(INGEST, "daily_arrivals")
# quality
CLEAN_PATIENTS = key(QUALITY, "clean_patients")
CLEAN_OBSERVATIONS = key(QUALITY, "clean_observations")
CLEAN_CONDITIONS = key(QUALITY, "clean_conditions")
CLEAN_CONSENTS = key(QUALITY, "clean_consents")
# deidentify
PSEUDONYM_MAP = key(DEIDENTIFY, "pseudonym_map")
DEID_PATIENTS = key(DEIDENTIFY, "patients")
DEID_OBSERVATIONS = key(DEIDENTIFY, "observations")
DEID_CONDITIONS = key(DEIDENTIFY, "conditions")
CONSENT_REGISTRY = key(DEIDENTIFY, "consent_registry")
DEID_IMAGES = key(DEIDENTIFY, "images")
# deidentify: free text (notes, dialogues) and released aggregates
PHI_TAGGER = key(DEIDENTIFY, "phi_tagger")
DEID_NOTES = key(DEIDENTIFY, "notes")
DEID_DIALOGUES = key(DEIDENTIFY, "dialogues")
RELEASED_STATISTICS = key(DEIDENTIFY, "released_statistics")
# label / curate / train / evaluate
DIABETES_LABELS = key(LABEL, "diabetes_labels")
# label: annotation import, review and labelled sets (clause 5.1.4, rows D10-D11)
TRIAGE_ANNOTATIONS = key(LABEL, "triage_annotations")
ENTITY_ANNOTATIONS = key(LABEL, "entity_annotations")
IMAGE_ANNOTATIONS = key(LABEL, "image_annotations")
EXPERT_DECISIONS = key(LABEL, "expert_decisions")
ADJUDICATION_QUEUE = key(LABEL, "adjudication_queue")
TRIAGE_LABELS = key(LABEL, "triage_labels")
CLINICAL_ENTITIES = key(LABEL, "clinical_entities")
LESION_MASKS = key(LABEL, "lesion_masks")
LESION_BOXES = key(LABEL, "lesion_boxes")
LABEL_AUDIT = key(LABEL, "label_audit")
WEAK_LABEL_COMPARISON = key(LABEL, "weak_label_comparison")
# curate: classification, preprocessing, spec datasets and their cards (rows D9, D11, M1, M2)
DATA_CLASSIFICATION = key(CURATE, "data_classification")
DIABETES_PREPROCESSING = key(CURATE, "diabetes_preprocessing")
LESION_DATASET = key(CURATE, "lesion_segmentation_dataset")
LESION_SPLITS = key(CURATE, "lesion_segmentation_splits")
DATASET_CATALOG = key(CURATE, "dataset_catalog")
DIABETES_FEATURES = key(CURATE, "diabetes_features")
DIABETES_SPLITS = key(CURATE, "diabetes_splits")
DIABETES_MODEL = key(TRAIN, "diabetes_model")
RETRAINING_REQUIRED = key(TRAIN, "retraining_required")
# model zoo (issue 11): curate-stage datasets of the text spec, and one training asset per spec
TRIAGE_DATASET = key(CURATE, "triage_dataset")
TRIAGE_SPLITS = key(CURATE, "triage_splits")
TEXT_TOKENIZER = key(TRAIN, "text_tokenizer")
TRIAGE_MODEL = key(TRAIN, "triage_model")
LESION_SEGMENTATION_MODEL = key(TRAIN, "lesion_segmentation_model")
LESION_CLASSIFIER_MODEL = key(TRAIN, "lesion_classifier_model")
DIABETES_GBM_MODEL = key(TRAIN, "diabetes_gbm_model")
DIABETES_FOREST_MODEL = key(TRAIN, "diabetes_forest_model")
DIABETES_ENSEMBLES = key(TRAIN, "diabetes_ensembles")
DIABETES_TUNING = key(TRAIN, "diabetes_tuning_study")
DIABETES_COMPRESSED = key(TRAIN, "diabetes_model_compressed")
DIABETES_DISTILLED = key(TRAIN, "diabetes_model_distilled")
LESION_CLASSIFIER_COMPRESSED = key(TRAIN, "lesion_classifier_compressed")
LESION_CLASSIFIER_DISTILLED = key(TRAIN, "lesion_classifier_distilled")
TRIAGE_DISTILLED = key(TRAIN, "triage_model_distilled")
DIABETES_EVALUATION = key(EVALUATE, "diabetes_evaluation_report")
PRIVACY_LEAK_SCAN = key(EVALUATE, "privacy_leak_scan")
# sequences (issue 11): hourly vital signs of inpatient stays -> the deterioration early-warning model
DETERIORATION_SPEC_ID = "deterioration"
RAW_VITAL_SIGNS = key(INGEST, "vital_signs")
DEID_VITAL_SIGNS = key(DEIDENTIFY, "vital_signs")
DETERIORATION_DATASET = key(CURATE, "deterioration_dataset")
DETERIORATION_SPLITS = key(CURATE, "deterioration_splits")
DETERIORATION_MODEL = key(TRAIN, "deterioration_model")
FORECAST_SPEC_ID = "vitals_forecast"  # row V2: next-hour heart rate from the same stays (regression)
FORECAST_DATASET = key(CURATE, "vitals_forecast_dataset")
FORECAST_MODEL = key(TRAIN, "vitals_forecast_model")
DETERIORATION_COMPRESSED = key(TRAIN, "deterioration_model_compressed")  # int8 dynamic + ONNX (row M7)

# asset checks
CHECK_GE_SUITE = "great_expectations_suite"
CHECK_NO_IDENTIFIERS = "no_direct_identifiers"
CHECK_K_ANONYMITY = "k_anonymity_at_least_k"
CHECK_NO_IDENTIFIER_IN_OUTPUTS = "no_identifier_in_mlflow_metadata_or_logs"
CHECK_NO_LEAKAGE = "no_patient_in_two_splits"
CHECK_RECONCILED = "records_reconciled"
CHECK_AGREEMENT = "agreement_meets_threshold"
CHECK_PREPROCESSING_TRAIN_ONLY = "preprocessing_fitted_on_train_only"
CHECK_MODEL_TRAINED = "model_trained"  # fails with WARN severity (blocks nothing) below a spec's min_rows
LABEL_AGREEMENT_TABLE = "agreement"  # label.agreement: one row per labelled set

# jobs / sensors
LIFECYCLE_JOB = "lifecycle_job"
INGEST_JOB = "ingest_job"
DOWNSTREAM_JOB = "downstream_job"
DAILY_ARRIVALS_JOB = "daily_arrivals_job"
LANDING_SENSOR = "landing_sensor"
RETRAIN_JOB = "retrain_job"  # the train and evaluate groups, launched by retrain_on_feedback
RETRAIN_ON_FEEDBACK_SENSOR = "retrain_on_feedback"

# warehouse schemas and audit tables
AUDIT_SCHEMA = LEDGER_SCHEMA  # "audit"
FILE_LEDGER_TABLE = LEDGER_TABLE  # "file_ledger"
QUARANTINE_TABLE = "quarantine"
FILE_OUTCOMES_TABLE = "file_outcomes"  # per landed file and ingest asset: in / out / quarantined / removed
# clinical_entities spec (symptom/disease/drug recognition): realigned dataset, splits, tagger
ENTITY_DATASET = key(CURATE, "entity_dataset")
ENTITY_SPLITS = key(CURATE, "entity_splits")
ENTITY_MODEL = key(TRAIN, "entity_model")
# note_generator spec (generative EHR): recorded consultations -> de-identified -> note pairs, splits, generator
RAW_CONSULTATIONS = key(INGEST, "consultations")
DEID_CONSULTATIONS = key(DEIDENTIFY, "consultations")
NOTE_PAIRS = key(CURATE, "note_pairs")
NOTE_SPLITS = key(CURATE, "note_splits")
NOTE_GENERATOR = key(TRAIN, "note_generator")
# evaluation (issue 12): one evaluation asset per spec (t2d_risk keeps DIABETES_EVALUATION), public benchmarks,
# and the promotion gate check on each
LESION_CLASSIFIER_EVALUATION = key(EVALUATE, "lesion_classifier_evaluation")
LESION_SEGMENTATION_EVALUATION = key(EVALUATE, "lesion_segmentation_evaluation")
DETERIORATION_EVALUATION = key(EVALUATE, "deterioration_evaluation")
FORECAST_EVALUATION = key(EVALUATE, "vitals_forecast_evaluation")
TRIAGE_EVALUATION = key(EVALUATE, "triage_evaluation")
ENTITY_EVALUATION = key(EVALUATE, "entity_evaluation")
NOTE_EVALUATION = key(EVALUATE, "note_generator_evaluation")
PUBLIC_BENCHMARKS = key(EVALUATE, "public_benchmarks")
CHECK_PROMOTION_GATE = "promotion_gate"  # the spec's thresholds hold; champion moves only then (WARN: blocks nothing)
EVALUATIONS = (DIABETES_EVALUATION, LESION_CLASSIFIER_EVALUATION, LESION_SEGMENTATION_EVALUATION,
               DETERIORATION_EVALUATION, FORECAST_EVALUATION, TRIAGE_EVALUATION, ENTITY_EVALUATION, NOTE_EVALUATION)
# deploy (issue 13): clinicians' feedback from the REST service, and the retraining it recommends (rows A4, P4)
CLINICAL_FEEDBACK = key(DEPLOY, "clinical_feedback")
CHECK_RETRAINING_TRIGGER = "retraining_trigger"  # fails with WARN severity (blocks nothing) when retraining is due
