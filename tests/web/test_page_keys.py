"""The page on a server that asks for API keys, in headless Chromium: it asks once (a
prompt), keeps the key in the browser, sends it with every call, asks again when the key
stops working, and says so when the user declines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from modelport.security.keys import KeyStore
from support.auth_fixtures import build_auth_repository
from support.browser_fixtures import ARTIFACTS

pytestmark = pytest.mark.timeout(90)

KEY_STORE = "modelport.apiKey"  # app.js's localStorage entry


@dataclass
class KeyedPageServer:
    url: str
    store: KeyStore
    token: str  # infer and tasks: what the page's calls need


@pytest.fixture(scope="module")
def keyed(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> KeyedPageServer:
    root = tmp_path_factory.mktemp("page-keys")
    repo, _ = build_auth_repository(root)
    store = KeyStore(root / "keys.json")
    token = store.create("browser", ["infer", "tasks"]).token
    proc = server_factory(repo=repo, env={"MODELPORT_KEYS_FILE": str(store.path)})
    return KeyedPageServer(proc.url, store, token)


@pytest.fixture
def keyed_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """As browser_fixtures.page, except that the browser's own console line for each 401
    ("Failed to load resource ... 401") is expected here; any other error fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None,
    )
    page.route("**/*", lambda route: route.continue_()
               if route.request.url.startswith("http://127.0.0.1") else route.abort())  # fmt: skip
    yield page
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    context.close()
    assert errors == [], errors


def answer_prompts(page: Any, answers: list[str | None]) -> list[str]:
    """Answer the page's prompts in order (None: cancel); returns the prompts' texts."""
    asked: list[str] = []

    def on_dialog(dialog: Any) -> None:
        asked.append(dialog.message)
        answer = answers[len(asked) - 1] if len(asked) <= len(answers) else None
        if answer is None:
            dialog.dismiss()
        else:
            dialog.accept(answer)

    page.on("dialog", on_dialog)
    return asked


def test_the_page_asks_for_a_key_once_and_keeps_it(keyed_page: Any, keyed: KeyedPageServer) -> None:
    asked = answer_prompts(keyed_page, [keyed.token])
    keyed_page.goto(keyed.url + "/")
    keyed_page.wait_for_selector("tr[data-model=add_sub] >> text=READY")
    assert len(asked) == 1, asked  # several calls were refused at once: one prompt
    assert "This server needs an API key" in asked[0]
    assert "Bearer" in asked[0]  # the server's own 401 message says how to send one
    assert keyed_page.evaluate(f"localStorage.getItem('{KEY_STORE}')") == keyed.token
    # A reload sends the kept key: no prompt, the list still loads.
    keyed_page.reload()
    keyed_page.wait_for_selector("tr[data-model=add_sub] >> text=READY")
    assert len(asked) == 1, asked
    assert keyed_page.is_hidden("#models-error")


def test_a_revoked_key_is_asked_for_again(keyed_page: Any, keyed: KeyedPageServer) -> None:
    stale = keyed.store.create("revoked-soon", ["infer", "tasks"])
    keyed.store.revoke(stale.key.id)
    # The key is stored from a page of the same origin that calls nothing (the page
    # itself would start calling, and prompting, before it is stored).
    keyed_page.goto(keyed.url + "/web/style.css")
    keyed_page.evaluate(f"localStorage.setItem('{KEY_STORE}', '{stale.token}')")
    asked = answer_prompts(keyed_page, [keyed.token])
    keyed_page.goto(keyed.url + "/")
    keyed_page.wait_for_selector("tr[data-model=add_sub] >> text=READY")
    assert len(asked) == 1, asked
    assert "not valid" in asked[0]  # the server says why the kept key was refused
    assert keyed_page.evaluate(f"localStorage.getItem('{KEY_STORE}')") == keyed.token


def test_declining_shows_why_the_list_is_empty(keyed_page: Any, keyed: KeyedPageServer) -> None:
    asked = answer_prompts(keyed_page, [None])
    keyed_page.goto(keyed.url + "/")
    keyed_page.wait_for_selector("#models-error:not([hidden])")
    text = keyed_page.inner_text("#models-error")
    assert "cannot list the models" in text and "API key" in text, text
    assert len(asked) == 1, asked  # declined: not asked again until a reload
    assert keyed_page.evaluate(f"localStorage.getItem('{KEY_STORE}')") is None
    assert keyed_page.locator("tr[data-model=add_sub]").count() == 0
