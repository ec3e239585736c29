"""The four application scenarios of clause 6.2 (rows A1-A4) as pure domain code the REST service wires.

Each scenario module takes loaded models (the predictors of lib/train) and plain JSON-able inputs and returns
JSON-able results; storage, authentication and HTTP live in ``medllm_pipelines.serving``.
"""
