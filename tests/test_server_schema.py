"""Schemathesis over every endpoint of the server, from its own OpenAPI schema (issue 19): valid
and invalid requests generated from the described request models, sent to a real server on
127.0.0.1. No response is a 5xx; every 4xx has an OpenAI-style error body; every response
conforms to the schema (status code, content type, body)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extra)")
hypothesis = pytest.importorskip("hypothesis")
httpx = pytest.importorskip("httpx")

from conftest import authed_server  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

OPERATIONS = ["POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health", "GET /metrics"]
EXAMPLES = {"POST": 120, "GET": 10}  # per operation and generation mode
AUTH = {"Authorization": "Bearer sekret"}
TOTALS: Counter = Counter()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def served(tiny_thinking):
    srv = authed_server(tiny_thinking, max_tokens=8, default_max_tokens=4)
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    yield srv, schema
    srv.stop()
    if TOTALS:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(TOTALS.items()) if k.isdigit())
        print(
            f"\nschemathesis: {TOTALS['requests']} requests over {TOTALS['operations']} operation/mode pairs; "
            f"status codes {{{codes}}}; 5xx: {sum(v for k, v in TOTALS.items() if k.startswith('5'))}; "
            f"4xx without an error body: {TOTALS['bad_4xx']}"
        )


def test_the_schema_describes_every_request_field(served):
    srv, _ = served
    doc = httpx.get(srv.url + "/openapi.json").json()
    comps = doc["components"]["schemas"]
    chat, completion = comps["ChatCompletionRequest"], comps["CompletionRequest"]
    from selar.methods import all_option_names

    for model in (chat, completion):
        assert model["additionalProperties"] is False
        assert all_option_names() - {"max_new_tokens"} <= set(model["properties"])
    assert set(doc["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
    post = doc["paths"]["/v1/chat/completions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    assert {"200", "400", "401", "500", "503", "507"} <= set(post["responses"])
    assert httpx.get(srv.url + "/docs").status_code == 200


# invalid requests only where there is something to make invalid (a body, or the bearer header)
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE) for op in OPERATIONS if op.startswith("POST") or op.endswith("models")
]


@pytest.mark.parametrize("label,mode", CASES, ids=lambda v: v.value if isinstance(v, GenerationMode) else v)
def test_schemathesis(served, label, mode):
    srv, schema = served
    method, path = label.split(" ")
    operation = schema[path][method]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    seen = Counter()

    @hypothesis.settings(
        max_examples=EXAMPLES[method],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=srv.url, headers=AUTH, timeout=60)
        seen[str(response.status_code)] += 1
        seen["requests"] += 1
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if 400 <= response.status_code < 500:
            err = response.json().get("error")
            ok = isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]
            seen["bad_4xx"] += not ok
            assert ok, response.text[:300]
        ctype = response.headers.get("content-type") or [""]
        if (ctype[0] if isinstance(ctype, list) else ctype).startswith("text/event-stream"):
            events = [
                json.loads(line[6:])
                for line in response.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
            assert events and not any("error" in e for e in events), response.text[:300]
        case.validate_response(response, checks=checks, headers=AUTH)

    try:
        run()
    finally:
        TOTALS.update(seen)
        TOTALS["operations"] += 1
    assert seen["requests"] > 0
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"
