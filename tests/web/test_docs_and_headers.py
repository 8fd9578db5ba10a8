"""``/docs`` is served from the package (no other host, offline) and every answer, the
page's, the docs' and the API's (the infer fast path's too), carries the security
headers; the page and the docs load in a real browser under that CSP with no error."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from modelport.api.http.asgi import CONTENT_SECURITY_POLICY
from support.browser_fixtures import ARTIFACTS

BODY = {"inputs": [
    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
]}  # fmt: skip


@pytest.fixture(scope="module")
def server(server_factory: Any) -> str:
    return str(server_factory().url)


def assert_secured(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY


def test_docs_load_nothing_from_another_host(server: str) -> None:
    docs = httpx.get(f"{server}/docs", timeout=10)
    assert docs.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert urls and not [u for u in urls if re.match(r"(?i)(https?:)?//", u)], urls
    assert "<script>" not in docs.text  # no inline script: the CSP forbids one
    for url in urls:
        answer = httpx.get(server + url, timeout=10)
        assert answer.status_code == 200, url
        assert answer.content


def test_every_answer_carries_the_security_headers(server: str) -> None:
    for path in ("/", "/docs", "/openapi.json", "/v2/models/simple", "/v2/models/nope/ready"):
        assert_secured(httpx.get(server + path, timeout=10))
    for body in (BODY, {"inputs": []}):  # the fast path's answers, success and error
        assert_secured(httpx.post(f"{server}/v2/models/simple/infer", json=body, timeout=10))


def test_docs_render_in_a_browser_under_the_policy(page: Any, server: str) -> None:
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "docs.png"))


def test_the_openapi_document_lists_the_v2_error_answers(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json", timeout=10).json()["paths"]
    infer = paths["/v2/models/{model}/infer"]["post"]["responses"]
    for status in ("400", "404", "413", "429", "503"):
        body = infer[status]["content"]["application/json"]["schema"]
        assert body["required"] == ["error"], status
    assert {"400", "404"} <= set(paths["/v2/models/{model}/versions/{version}"]["get"]["responses"])
