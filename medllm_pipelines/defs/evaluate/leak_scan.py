"""The run-wide leak scan: MLflow params/artifacts, asset metadata and logs against the raw zone's identifiers."""

ASSETS: list = []
CHECKS: list = []
