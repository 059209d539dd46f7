"""The request service's API under schemathesis: requests generated from its own OpenAPI document, each answer checked
with all of schemathesis's checks (no 5xx; every status code, content type, header and body as the document says;
schema-valid requests accepted, invalid ones refused): as the first-run service (no policy, everyone
``default_owner``) and authenticated under a policy (an identity in the request's scope, as mutual TLS puts it
there; here a test-only middleware stands in for the TLS layer)."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from beamstream.service.app import create_app
from beamstream.service.settings import ServiceSettings
from servicekit import AsUser
from test_authorization import POLICY, write_policy


@pytest.fixture(scope="module", params=["first-run", "authenticated"])
def api_schema(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    policy = None
    if request.param == "authenticated":
        policy = folder / "policy.yaml"
        write_policy(policy, POLICY)
    app = create_app(ServiceSettings(database_url=f"sqlite:///{folder / 'service.db'}", state_dir=folder / "state",
                                     xtc_root=folder / "xtc", policy_file=policy))
    schema = schemathesis.openapi.from_asgi("/openapi.json", AsUser(app) if policy else app)
    yield schema, {"x-test-user": "alice"} if policy else {}
    app.state.context.store.close()


def test_every_generated_request_is_answered_as_the_document_says(api_schema):
    """Every operation of the served OpenAPI document, with requests generated from it (conforming to it, and not)."""
    schema, headers = api_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {"POST /v1/streams", "GET /v1/streams/{stream_id}/events",
                                                             "DELETE /v1/streams/{stream_id}"}
    for operation, mode in itertools.product(operations, GenerationMode):
        # a spec can be valid under its JSON Schema and still refused (422) for what a schema cannot say: a step
        # reading a field its source does not make, a constants file that is neither .npy nor HDF5, ...
        unchecked = [positive_data_acceptance] if operation.label == "POST /v1/streams" else []
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def as_documented(case):
            case.call_and_validate(headers=headers, excluded_checks=unchecked)

        try:
            as_documented()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, f"no request generated for {operation.label}"  # nothing to break
