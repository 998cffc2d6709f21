"""The web pages in real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Skipped when Playwright or Chromium is missing. Screenshots go to tests/artifacts/ (gitignored):
chat.png after a streamed answer, label.png before submitting a ranking.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from picochat.engine import Engine
from picochat.model import GPT, GPTConfig
from picochat.serve.app import ServeOptions, ServerThread, create_app
from picochat.serve.labels import LabelStore
from picochat.tokenizer import Tokenizer

sync_api = pytest.importorskip("playwright.sync_api")

TOKEN = "browser-token"
XSS_PROMPT = '<img src=x onerror="window.__xss=1"> what is 2 + 2?'


@pytest.fixture(scope="module")
def server(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    db = tmp_path_factory.mktemp("browser") / "labels.db"
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=128)).eval()
    options = ServeOptions(model_name="picochat-browser", label_token=TOKEN, db_path=db,
                           label_prompts=(XSS_PROMPT,), label_k=3, label_max_tokens=16)  # fmt: skip
    with ServerThread(create_app(Engine(model, tok), options)) as s:
        yield s.url, db
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(browser: sync_api.Browser) -> sync_api.Page:
    return browser.new_page(viewport={"width": 1100, "height": 760})


def test_chat_streams_an_answer(server: tuple[str, Path], page: sync_api.Page, artifacts: Path) -> None:
    url, _ = server
    page.goto(url + "/")
    sync_api.expect(page.locator("#model-name")).to_have_text("picochat-browser")
    page.fill("#max-tokens", "40")
    page.fill("#input", "<b>hello</b> there")
    page.press("#input", "Enter")
    user = page.locator(".msg.user .content")
    sync_api.expect(user).to_have_text("<b>hello</b> there")  # shown as text, not markup
    answer = page.locator(".msg.assistant .content").first
    sync_api.expect(page.locator("#send")).to_be_enabled(timeout=30_000)
    assert len(answer.text_content()) > 0
    assert page.locator(".msg.user b").count() == 0
    page.screenshot(path=str(artifacts / "chat.png"), full_page=True)
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0


def test_label_page_stores_a_ranking(server: tuple[str, Path], page: sync_api.Page, artifacts: Path) -> None:
    url, db = server
    page.goto(f"{url}/label#token={TOKEN}")
    selects = page.locator("select.rank")
    sync_api.expect(selects).to_have_count(3, timeout=30_000)
    sync_api.expect(page.locator("#prompt")).to_have_text(XSS_PROMPT)  # escaped: shown as text
    assert page.evaluate("window.__xss") is None
    assert "token" not in page.url  # the token is removed from the address bar
    for i, rank in enumerate(["2", "1", "2"]):
        selects.nth(i).select_option(rank)
    page.fill("#labeler", "playwright")
    page.screenshot(path=str(artifacts / "label.png"), full_page=True)
    page.click("#submit")
    sync_api.expect(page.locator("#label-count")).to_have_text("1 labels", timeout=30_000)
    (row,) = LabelStore(db).rows()
    assert (row.prompt, row.ranks, row.ranking, row.ties, row.labeler) == (
        XSS_PROMPT,
        [2, 1, 2],
        [1, 0, 2],
        True,
        "playwright",
    )
