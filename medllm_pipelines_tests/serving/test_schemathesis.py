"""Property-based requests from the OpenAPI schema (schemathesis), authenticated: no input makes a 5xx (row P2).

Schemathesis' own pytest plugin reads ``item._nodeid``, which pytest 9 no longer has, so each operation is a
parametrised test that draws cases from schemathesis' strategy with Hypothesis directly.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from medllm_pipelines.serving.app import create_app
from medllm_pipelines_tests.serving.conftest import Service

# The schema does not need a running context: build it from an app that was never started.
OPERATIONS = sorted((path, method.upper()) for path, item in create_app(lambda: None).openapi()["paths"].items()
                    for method in item if method in {"get", "post", "put", "delete", "patch"})


@pytest.fixture(scope="module")
def api_schema(served: Service) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", served.client.app)


@pytest.fixture(scope="module")
def bearer(served: Service) -> dict[str, str]:
    return served.headers("clinician")


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_request_the_schema_allows_makes_a_server_error(api_schema: Any, bearer: dict[str, str], path: str,
                                                          method: str) -> None:
    operation = api_schema[path][method]
    server_errors: list[str] = []
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        response = case.call(headers={**(case.headers or {}), **bearer})
        statuses.append(response.status_code)
        if response.status_code >= 500 and response.status_code != 503:
            server_errors.append(f"{response.status_code} {response.text[:200]}")
        if response.status_code == 503:  # only a missing model may answer 503, never a crash
            assert response.json()["reason"] in {"model_unavailable", "key_service_unavailable"}, response.text

    call()
    assert statuses, "no request was generated"
    assert not server_errors, server_errors[:3]
    assert len(OPERATIONS) >= 14
