"""Schemathesis against a real server's OpenAPI documents: every operation, a bounded
number of generated requests each (valid ones, and ones that break the schema), every
answer checked against the document: no server error, a documented status, content
type, headers and body. The server must still be healthy afterwards.

The server serves the bundled example repository, with the tasks API and the zip-task
cluster API on (under the main port's prefix, and at the root of a listener of its own,
whose document is checked too); no task slots: nothing here needs Docker. Generated
model names are almost never real ones, so the operations on a model run a third time
with valid requests for the example models (which also loads and unloads them).

A 5xx is a failure unless the operation documents it as an answer: 501 (not
supported) and 503 (a model not loaded, not ready) with ``{"error": ...}``, and the
zip-task cluster server's own 550..554. They are counted and printed with the rest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelport.settings import EXAMPLES
from support.cluster_fixtures import free_port

EXAMPLES_PER_OPERATION = 25  # per operation, and per kind of request
# Answers, not failures, where the operation documents them.
ANSWERS_5XX = {501, 503, 550, 551, 552, 553, 554}
MODELS = sorted(p.name for p in EXAMPLES.iterdir() if (p / "model.yaml").is_file())


def server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's not_a_server_error, except for a 5xx the operation documents."""
    status = response.status_code
    if status in ANSWERS_5XX and str(status) in case.operation.responses.status_codes:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Tally:
    """What a run tried and saw: cases by operation and kind, answers by status, and
    each check that failed (the operation, the check's report, a curl to repeat it)."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    answers_5xx: Counter[str] = field(default_factory=Counter)  # "label: status"
    violations: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"{count:4d}  {label}" for label, count in sorted(self.cases.items())]
        answers = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        head = (
            f"schemathesis: {sum(self.cases.values())} cases, {len(self.cases)} "
            f"operation/kind pairs, {len(self.violations)} violations; answers {answers}"
        )
        answered = [f"{count:4d}  {label}" for label, count in sorted(self.answers_5xx.items())]
        return "\n".join([head, *lines, "documented 5xx answers:", *answered])


@pytest.fixture(scope="module")
def example_server(server_factory: Any) -> Any:
    env = {"MODELPORT_TASK_SLOTS": "0"}
    port = free_port()
    proc = server_factory(
        env=env, repo=EXAMPLES, args=["--compat", f"inference-server=127.0.0.1:{port}"]
    )
    return proc, f"http://127.0.0.1:{port}"


def _fuzz(operation: Any, strategy: Any, label: str, url: str, tally: Tally) -> None:
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        tally.cases[label] += 1
        response = case.call(base_url=url, session=session, timeout=30)
        tally.statuses[response.status_code] += 1
        if response.status_code >= 500:
            tally.answers_5xx[f"{label}: {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as failed:
            tally.violations.append(f"{label}: {failed}\n  {case.as_curl_command()}")

    try:
        run()
    except Unsatisfiable:
        # An operation with no parameters and no body has no invalid request.
        assert "negative" in label, label


def _on_a_model(operation: Any) -> Any:
    """Valid requests for ``operation`` with one of the example models in the path."""
    return st.tuples(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE), st.sampled_from(MODELS)
    ).map(lambda pair: _with_model(*pair))


def _with_model(case: Any, model: str) -> Any:
    case.path_parameters = {**case.path_parameters, "model": model}
    return case


def _fuzz_document(url: str, tally: Tally, listener: str) -> int:
    """Every operation of the document at ``url``; how many there are."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        name = f"{listener}: {operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            _fuzz(operation, strategy, f"{name} ({mode.value})", url, tally)
        # (Not unload: the example models unloaded, the rest of the run would only see 503.)
        if "{model}" in operation.path and not operation.path.endswith("/unload"):
            _fuzz(operation, _on_a_model(operation), f"{name} (example models)", url, tally)
    return len(operations)


@pytest.mark.timeout(600)
def test_every_operation_answers_as_its_document_says(example_server: Any) -> None:
    proc, compat_url = example_server
    tally = Tally()
    operations = _fuzz_document(proc.url, tally, "main") + _fuzz_document(
        compat_url, tally, "inference-server"
    )
    print(f"\n{operations} operations; {tally.report()}")
    assert not tally.violations, "\n\n".join(tally.violations[:20])
    assert 500 not in tally.statuses
    assert httpx.get(f"{proc.url}/v2/health/ready", timeout=5).status_code == 200
    assert proc.process.poll() is None
    # Every operation really ran cases: one each at least, and many where it has inputs.
    assert sum(tally.cases.values()) > 2 * operations


def test_the_documents_give_every_error_a_body_and_every_json_body_a_schema(
    example_server: Any,
) -> None:
    proc, compat_url = example_server
    for url in (proc.url, compat_url):
        document = httpx.get(f"{url}/openapi.json", timeout=10).json()
        assert "HTTPValidationError" not in document["components"]["schemas"]
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                where = f"{url} {method.upper()} {path}"
                errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
                assert {"401", "403", "429"} <= set(errors), where  # the key check's
                for status, answer in errors.items():
                    if "content" not in answer:  # readiness: a bare 503
                        assert status == "503" and path.endswith(("/ready", "/live")), where
                        continue
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema.get("required") or schema.get("anyOf"), (where, status)
                json_body = operation.get("requestBody", {}).get("content", {})
                if "application/json" in json_body:
                    assert "$ref" in str(json_body["application/json"]["schema"]), where
