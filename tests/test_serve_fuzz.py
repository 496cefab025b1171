"""Schema fuzzing: schemathesis sends requests generated from the server's own /openapi.json, valid
and invalid, to every operation; none may get a 5xx, and every refusal is OpenAI's error body.

The number of examples per operation is small in CI (HANGPT_FUZZ_EXAMPLES raises it for a longer run).
The mixed good-and-bad batches are in test_serve_reliability.py.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis.checks import not_a_server_error  # noqa: E402

from test_serve_support import running_server  # noqa: E402

EXAMPLES = int(os.environ.get("HANGPT_FUZZ_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def api_schema(tiny_checkpoint, tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "feedback.sqlite"
    with running_server(tiny_checkpoint, feedback_db=db, max_tokens_limit=8, max_n=3) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


def refusals_are_openai_errors(ctx, response, case):
    """Any 4xx carries {"error": {"message": ...}} (what OpenAI clients read)."""
    if 400 <= response.status_code < 500:
        error = response.json().get("error")
        assert isinstance(error, dict) and error.get("message"), response.text


def test_no_request_gets_a_server_error(api_schema):
    """Every operation, with generated valid and invalid bodies, parameters and headers. (The
    schemathesis pytest plugin is not used: its fixture loader does not run under pytest 9.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/feedback"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(timeout=60)
            case.validate_response(response, checks=[not_a_server_error, refusals_are_openai_errors])

        fuzz()
