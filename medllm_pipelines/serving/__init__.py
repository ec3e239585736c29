"""The REST service (clause 6.1, rows P1-P4; scenarios 6.2, rows A1-A4): ``medllm serve``.

``app.create_app`` builds the FastAPI application; ``routers/`` holds one router per scenario plus auth and
operations; the domain code of the scenarios lives in ``lib/scenarios`` and the security primitives in
``lib/security``. The service keeps no state in a worker's memory that another worker needs (sessions, notes,
studies and limits live in the store and Redis), so it scales by adding workers or replicas.
"""
