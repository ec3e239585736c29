"""Asset keys, group names and check names: constants, never repeated strings."""


from dagster import AssetKey

INGEST = "ingest"
QUALITY = "quality"
DEIDENTIFY = "deidentify"
LABEL = "label"
CURATE = "curate"
TRAIN = "train"
EVALUATE = "evaluate"
STAGES = (INGEST, QUALITY, DEIDENTIFY, LABEL, CURATE, TRAIN, EVALUATE)


def key(stage: str, name: str) -> AssetKey:
    return AssetKey([stage, name])


# ingest
LANDED_FILES = key(INGEST, "landed_files")
RAW_PATIENTS = key(INGEST, "patients")
RAW_ENCOUNTERS = key(INGEST, "encounters")
RAW_CONDITIONS = key(INGEST, "conditions")
RAW_OBSERVATIONS = key(INGEST, "observations")
RAW_MEDICATION_REQUESTS = key(INGEST, "medication_requests")
RAW_NOTES = key(INGEST, "notes")
RAW_CONSENTS = key(INGEST, "consents")
RAW_DICOM_INSTANCES = key(INGEST, "dicom_instances")
RAW_DIALOGUES = key(INGEST, "dialogues")
RAW_ANNOTATIONS = key(INGEST, "annotations")
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
# label / curate / train / evaluate
DIABETES_LABELS = key(LABEL, "diabetes_labels")
DIABETES_FEATURES = key(CURATE, "diabetes_features")
DIABETES_SPLITS = key(CURATE, "diabetes_splits")
DIABETES_MODEL = key(TRAIN, "diabetes_model")
DIABETES_EVALUATION = key(EVALUATE, "diabetes_evaluation_report")

# asset checks
CHECK_GE_SUITE = "great_expectations_suite"
CHECK_NO_IDENTIFIERS = "no_direct_identifiers"
CHECK_NO_LEAKAGE = "no_patient_in_two_splits"
CHECK_RECONCILED = "records_reconciled"

# jobs / sensors
LIFECYCLE_JOB = "lifecycle_job"
INGEST_JOB = "ingest_job"
LANDING_SENSOR = "landing_zone_sensor"

# warehouse schemas and audit tables
AUDIT_SCHEMA = "audit"
FILE_LEDGER_TABLE = "file_ledger"
QUARANTINE_TABLE = "quarantine"
