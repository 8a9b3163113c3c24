"""Property-based fuzzing of the served OpenAPI schema with schemathesis, against a real server over the scripted
model: schema-valid and schema-invalid bodies for every operation, and the server never answers with a 5xx.

The default run is small (it fits the suite's time budget); ``-m slow`` runs a larger one. A one-off CLI run for
the record: ``schemathesis run URL/openapi.json -c not_a_server_error -n 150`` (2890 cases, no 5xx).
"""

from __future__ import annotations

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serve.scripted import ScriptedBackend, completion
from xinzhou.serve import ServerConfig, create_app
from xinzhou.serve.launch import ServerThread

REPLY = completion("Thinking about it.", "Answer.", [("f", {"a": 1})])
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def api_schema():
    backend = ScriptedBackend([REPLY], max_model_len=4096)
    with ServerThread(create_app(backend, ServerConfig(max_tokens_limit=1000))) as server:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


def fuzz(api_schema, mode, max_examples: int) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    for result in api_schema.get_all_operations():
        op = result.ok()
        if mode == MODES[1] and op.method.upper() == "GET":
            continue  # nothing to get wrong: no parameters

        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(timeout=30)
            statuses[(op.path, response.status_code)] += 1
            assert response.status_code < 500, f"{op.path} -> {response.status_code}: {response.text[:300]}"
            assert response.headers["content-type"][0].startswith(("application/json", "text/event-stream"))

        check()
    return statuses


@pytest.mark.parametrize("mode", MODES, ids=["valid", "invalid"])
def test_no_server_errors(api_schema, mode):
    statuses = fuzz(api_schema, mode, 8)
    assert sum(statuses.values()) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, ids=["valid", "invalid"])
def test_no_server_errors_long(api_schema, mode):
    fuzz(api_schema, mode, 300)
