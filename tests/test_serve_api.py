"""The OpenAI-compatible API against a live uvicorn server, driven by the official `openai` client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from picochat.checkpoint import load_checkpoint, save_checkpoint
from picochat.engine import Engine, SamplingParams
from picochat.model import GPT, GPTConfig
from picochat.serve.app import ServeOptions, ServerThread, create_app
from picochat.tokenizer import Tokenizer

openai = pytest.importorskip("openai")

MODEL = "picochat-test"
MESSAGES = [{"role": "user", "content": "ROMEO: what light?"}]


@pytest.fixture(scope="module")
def served(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Engine]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-core machine shared with other jobs: one thread decodes fastest
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("serve")
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=128))
    save_checkpoint(tmp / "ckpt", model, tok)
    model, tok = load_checkpoint(tmp / "ckpt")
    engine = Engine(model, tok)
    options = ServeOptions(
        model_name=MODEL, label_token="t", db_path=tmp / "labels.db", label_prompts=("hi",)
    )
    with ServerThread(create_app(engine, options)) as server:
        yield server, engine
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(served: tuple[ServerThread, Engine]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion_equals_engine_output_and_counts_usage(
    client: openai.OpenAI, served: tuple[ServerThread, Engine]
) -> None:
    engine = served[1]
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, seed=3, temperature=1.0
    )
    prompt_ids = engine.tok.render_prompt(MESSAGES)
    expected = engine.generate([prompt_ids], max_new_tokens=12, seed=3)[0]
    assert out.choices[0].message.content == expected
    assert out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 12


def test_stream_gives_the_same_text_as_non_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, seed=5)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=16,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really streamed


def test_seed_determinism(client: openai.OpenAI) -> None:
    def run(seed: int) -> list[str]:
        out = client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=20, seed=seed, n=3)
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    first = run(11)
    assert run(11) == first
    assert run(12) != first
    assert len(set(first)) > 1  # n samples of one request differ from each other


def test_completions_endpoint_and_list_prompts(
    client: openai.OpenAI, served: tuple[ServerThread, Engine]
) -> None:
    engine = served[1]
    out = client.completions.create(model=MODEL, prompt="The quick", max_tokens=8, seed=2, temperature=0.7)
    assert out.object == "text_completion"
    assert out.choices[0].text == engine.generate(["The quick"], max_new_tokens=8, temperature=0.7, seed=2)[0]
    many = client.completions.create(model=MODEL, prompt=["a", "b c"], max_tokens=4, n=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    assert many.usage.prompt_tokens == len(engine.tok.encode("a")) + len(engine.tok.encode("b c"))


def test_n_answers_stream_on_their_own_indices(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, n=3, stream=True)
    )
    finished = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason)
    assert finished == [0, 1, 2]


def test_stop_string_cuts_the_answer(client: openai.OpenAI) -> None:
    def run(seed: int, stop: list[str] | None = None) -> openai.types.Completion:
        return client.completions.create(model=MODEL, prompt="ROMEO", max_tokens=40, seed=seed, stop=stop)

    texts = ((s, run(s).choices[0].text) for s in range(7, 40))
    seed, full = next((s, t) for s, t in texts if sum(ch.isascii() and ch.isalpha() for ch in t) >= 3)
    stop = [ch for ch in full if ch.isascii() and ch.isalpha()][-1]  # a letter that occurs late in the text
    cut = run(seed, [stop, "never-generated"])
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_temperature_zero_is_greedy(client: openai.OpenAI) -> None:
    a = client.completions.create(model=MODEL, prompt="O Romeo", max_tokens=10, temperature=0)
    b = client.completions.create(model=MODEL, prompt="O Romeo", max_tokens=10, temperature=0, seed=99)
    assert a.choices[0].text == b.choices[0].text


def test_concurrent_requests_share_batches(served: tuple[ServerThread, Engine]) -> None:
    server, _ = served
    stats = server.server.config.app.state.scheduler.stats
    before = dict(stats)
    results: list[int] = []

    def one() -> None:
        body = {"model": MODEL, "prompt": "fox", "max_tokens": 24}
        results.append(httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code)

    workers = [threading.Thread(target=one) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [200] * 8
    assert stats["requests"] - before["requests"] == 8
    assert stats["batches"] - before["batches"] < 8  # some requests were decoded together
    assert stats["max_rows"] >= 2


def test_client_disconnect_cancels_generation(
    served: tuple[ServerThread, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, engine = served
    stats = server.server.config.app.state.scheduler.stats
    before = dict(stats)
    plain = engine.tok.encode("a")[0]

    def slow_steps(
        prompts: list[list[int]], params: SamplingParams, **_: object
    ) -> Iterator[list[tuple[int, int]]]:
        # A real micro model can finish 120 tokens (or sample a stop token) before the server sees the
        # hang-up; a slow stream of ordinary tokens makes the disconnect the only way the request ends.
        for _ in range(params.max_new_tokens):
            time.sleep(0.05)
            yield [(row, plain) for row in range(len(prompts))]

    monkeypatch.setattr(engine, "generate_tokens", slow_steps)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 120, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk arrived; now hang up
    deadline = time.monotonic() + 10
    while stats["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["cancelled"] == before["cancelled"] + 1
    assert stats["tokens"] - before["tokens"] < 120
    monkeypatch.undo()
    ok = httpx.post(
        server.url + "/v1/completions", json={"model": MODEL, "prompt": "y", "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200


def test_chat_page_and_static_files(served: tuple[ServerThread, Engine]) -> None:
    url = served[0].url
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "/static/chat.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(url + "/static/chat.js").headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in httpx.get(url + "/static/chat.js").text
    assert httpx.get(url + "/label").status_code == 200
    for bad in ["/static/..%2Fapp.py", "/static/%2e%2e/app.py", "/static/nope.js"]:
        assert httpx.get(url + bad).status_code == 404


def test_unknown_model_and_context_overflow_are_client_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="hi " * 200, max_tokens=10)


def test_checkpoint_path_round_trip(tmp_path: Path, tok: Tokenizer) -> None:
    """`serve()`'s loading path: a saved micro checkpoint gives the same engine output after reload."""
    torch.manual_seed(1)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size))
    save_checkpoint(tmp_path / "c", model, tok)
    loaded, tok2 = load_checkpoint(tmp_path / "c")
    a = Engine(model.eval(), tok).generate(["ab"], max_new_tokens=5, seed=0)
    assert Engine(loaded, tok2).generate(["ab"], max_new_tokens=5, seed=0) == a
