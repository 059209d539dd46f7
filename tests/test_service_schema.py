"""The request service's API under schemathesis: requests generated from its own OpenAPI document, none answered 5xx."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from beamstream.service.api import create_app
from beamstream.service.settings import ServiceSettings


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    app = create_app(ServiceSettings(database_url=f"sqlite:///{folder / 'service.db'}", state_dir=folder / "state",
                                     xtc_root=folder / "xtc"))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.store.close()


def test_no_generated_request_gets_a_server_error(api_schema):
    """Every operation of the served OpenAPI document, with requests generated from it (conforming to it, and not)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {"POST /v1/streams", "GET /v1/streams/{stream_id}/events",
                                                             "DELETE /v1/streams/{stream_id}"}
    for operation, mode in itertools.product(operations, GenerationMode):
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case):
            response = case.call()
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:2000]}")

        try:
            no_server_error()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, f"no request generated for {operation.label}"  # nothing to break
