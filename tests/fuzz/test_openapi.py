"""Schemathesis against a real server's OpenAPI document: every operation, a bounded
number of generated requests each (valid ones, and ones that break the schema); no
answer may be a server error, and the server must still be healthy afterwards.

The server serves the bundled example repository, with the tasks API and the zip-task
cluster API on (no task slots: nothing here needs Docker). 501 (not supported) and 503
(a model not loaded) are answers, not errors; 500 and a dropped connection are failures.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from modelport.settings import EXAMPLES

EXAMPLES_PER_OPERATION = 25
ANSWERS_5XX = {501, 503}  # unsupported, unavailable: answers with {"error": ...}
# The zip-task cluster server's own codes: pending, failed, no output, no such task.
COMPAT_CODES = {551, 552, 553, 554}


@pytest.fixture(scope="module")
def example_server(server_factory: Any) -> Any:
    env = {"MODELPORT_TASK_SLOTS": "0"}
    return server_factory(env=env, repo=EXAMPLES)


def _check(response: Any, where: str) -> None:
    if response.status_code in COMPAT_CODES and "/compat/inference-server/" in where:
        return
    if response.status_code >= 500:
        assert response.status_code in ANSWERS_5XX, f"{where}: {response.status_code}"
        assert "error" in response.json(), f"{where}: {response.text[:300]}"


def _fuzz_operation(operation: Any, mode: GenerationMode, url: str, session: Any) -> int:
    """Run generated requests for one operation; the number of cases tried."""
    label = f"{operation.method.upper()} {operation.path}"
    count = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal count
        count += 1
        response = case.call(base_url=url, session=session, timeout=10)
        _check(response, f"{label} {case.as_curl_command()}")

    try:
        run()
    except Unsatisfiable:
        # An operation with no parameters and no body has no invalid request.
        assert mode is GenerationMode.NEGATIVE, label
    return count


@pytest.mark.timeout(300)
def test_no_server_errors_on_any_operation(example_server: Any) -> None:
    url = example_server.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tried: dict[str, int] = {}
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.method.upper()} {operation.path} ({mode.value})"
            tried[label] = _fuzz_operation(operation, mode, url, session)
    assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    assert example_server.process.poll() is None
    total = sum(tried.values())
    print(f"\nschemathesis: {total} cases over {len(tried)} operation/mode pairs")
    for label, count in sorted(tried.items()):
        print(f"  {count:4d}  {label}")
    assert total > len(tried)  # every operation really ran cases
