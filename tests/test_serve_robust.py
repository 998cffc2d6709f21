"""Server robustness: fuzzed malformed requests get 4xx with an OpenAI error body and the server keeps
answering; the labeling API needs its token and refuses cross-site posts; the optional API key works."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from picochat.engine import Engine
from picochat.model import GPT, GPTConfig
from picochat.serve.app import ServeOptions, ServerThread, create_app
from picochat.serve.labels import LabelStore
from picochat.tokenizer import Tokenizer

MODEL = "m"
TOKEN = "secret-token"
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    db = tmp_path_factory.mktemp("robust") / "labels.db"
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=128)).eval()
    prompts = ("<img src=x onerror=alert(1)>", "2 + 2 = ?")
    options = ServeOptions(model_name=MODEL, label_token=TOKEN, db_path=db, label_prompts=prompts, label_k=3,
                           label_max_tokens=8, max_body_bytes=100_000)  # fmt: skip
    with ServerThread(create_app(Engine(model, tok), options)) as s:
        yield s.url, db
    torch.set_num_threads(threads)


def malformed_requests(rng: random.Random, n: int) -> Iterator[tuple[str, str, bytes, dict[str, str]]]:
    """(method, path, body, headers) of n requests that are each wrong in at least one way."""
    bad_values = [None, "x", -1, 0, 10**12, 1e308, [], {}, [1, 2], True, "Infinity", {"a": [1]}]
    fields = [
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "n",
        "stop",
        "seed",
        "stream",
        "prompt",
    ]
    wrong_field_values = {  # values that are invalid for that field whatever else the body holds
        "model": ["nope", 3, None, [], "x" * 300],
        "temperature": [-1, 2.5, "hot", None, [], 1e9],
        "top_p": [0, -0.5, 1.5, "all", []],
        "max_tokens": [0, -5, 10**9, "many", 1.5, [], 10**30],
        "n": [0, -1, 9, 1000, "two", 1.5],
        "stop": [3, [1, 2], [""], ["a"] * 9, {"s": 1}, "x" * 300],
        "seed": [-1, 2**70, "s", 1.5],
        "stream": ["yes", 2, []],
    }
    json_junk = [b"{", b"}", b"[", b"nul", b'{"messages": [}', b"\xff\xfe\xfd", b'{"a": "\xc3\x28"}',
                 b"[" * 50_000 + b"]" * 50_000, b'{"messages": NaN}', b"", b"\x00" * 100]  # fmt: skip
    chat_roles = ["robot", "", None, 3, "tool"]
    for i in range(n):
        kind = i % 8
        headers = {"content-type": "application/json"}
        path = rng.choice(["/v1/chat/completions", "/v1/completions"])
        if kind == 0:
            body = rng.choice(json_junk)
        elif kind == 1:  # one field with a wrong value, the rest valid
            field = rng.choice(list(wrong_field_values))
            base = dict(GOOD_CHAT) if path.endswith("chat/completions") else {"model": MODEL, "prompt": "hi"}
            base[field] = rng.choice(wrong_field_values[field])
            body = json.dumps(base).encode()
        elif kind == 2:  # bad messages
            msgs = rng.choice([[], "hi", [{"role": rng.choice(chat_roles), "content": "x"}], [{"content": "x"}],
                               [{"role": "user", "content": rng.choice([3, None, ["a"], {"t": 1}])}], [1, 2]])  # fmt: skip
            body, path = json.dumps({"model": MODEL, "messages": msgs}).encode(), "/v1/chat/completions"
        elif kind == 3:  # prompt wrong type or too long for the context
            prompt = rng.choice([3, None, [1, 2], [], ["a"] * 20, {"p": 1}, "word " * 500])
            body, path = (
                json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4}).encode(),
                "/v1/completions",
            )
        elif kind == 4:  # oversized body (declared or not)
            body = b'{"prompt": "' + b"a" * rng.choice([100_001, 300_000]) + b'"}'
        elif kind == 5:  # random garbage fields, all wrong
            obj = {f: rng.choice(bad_values) for f in rng.sample(fields, 4)}
            obj["n"] = rng.choice([0, -3, "n", 99])
            body = json.dumps(obj).encode()
        elif kind == 6:  # wrong method, unknown routes, path traversal
            method, route = rng.choice([("GET", "/v1/chat/completions"), ("PUT", "/v1/completions"),
                                        ("GET", "/static/../../etc/passwd"), ("GET", "/static/..%2F..%2Fapp.py"),
                                        ("GET", "/v1/models/other"), ("DELETE", "/"), ("GET", "/static/%00"),
                                        ("GET", "/v2/anything")])  # fmt: skip
            yield method, route, b"", {}
            continue
        else:  # wrong content type or non-object JSON
            body = rng.choice([b"model=m&prompt=hi", b"[1, 2, 3]", b'"just a string"', b"42"])
            headers = {
                "content-type": rng.choice(
                    ["text/plain", "application/json", "application/x-www-form-urlencoded"]
                )
            }
        yield "POST", path, body, headers


def test_fuzzed_requests_get_4xx_and_the_server_survives(server: tuple[str, Path]) -> None:
    url, _ = server
    rng = random.Random(0)
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, path, body, headers in malformed_requests(rng, 520):
            r = client.request(method, path, content=body, headers=headers)
            statuses.append(r.status_code)
            assert 400 <= r.status_code < 500, (method, path, body[:200], r.status_code, r.text[:300])
            error = r.json()["error"]
            assert isinstance(error["message"], str) and error["message"]
            assert set(error) == {"message", "type", "param", "code"}
        assert client.post("/v1/chat/completions", json=GOOD_CHAT).status_code == 200
    assert len(statuses) == 520
    assert {400, 404, 405, 413, 422} <= set(statuses)


def label_headers(token: str | None = TOKEN, origin: str | None = None) -> dict[str, str]:
    headers = {} if token is None else {"X-Label-Token": token}
    if origin:
        headers["Origin"] = origin
    return headers


def test_label_api_needs_the_token(server: tuple[str, Path]) -> None:
    url, _ = server
    assert httpx.get(url + "/api/label/task", headers=label_headers(None)).status_code == 401
    assert httpx.get(url + "/api/label/task", headers=label_headers("wrong")).status_code == 403
    assert httpx.get(url + "/api/label/task", headers={"X-Label-Token": "é".encode()}).status_code == 403
    submit = {"task_id": "abc", "ranks": [1, 2, 3]}
    assert httpx.post(url + "/api/label/submit", json=submit, headers=label_headers(None)).status_code == 401
    assert (
        httpx.post(url + "/api/label/submit", json=submit, headers=label_headers("nope")).status_code == 403
    )


def test_label_round_trip_and_validation(server: tuple[str, Path]) -> None:
    url, db = server
    before = LabelStore(db).count()
    task = httpx.get(url + "/api/label/task", headers=label_headers(), timeout=30).json()
    assert len(task["completions"]) == 3
    submit = url + "/api/label/submit"
    body = {"task_id": task["task_id"], "ranks": [2, 1, 2], "labeler": "<b>bob</b>"}
    evil = httpx.post(submit, json=body, headers=label_headers(origin="http://evil.example"))
    assert evil.status_code == 403
    referer = httpx.post(submit, json=body, headers={**label_headers(), "Referer": "http://evil.example/x"})
    assert referer.status_code == 403
    for bad in ([1, 2], [0, 1, 2], [1, 2, 4], ["1", 2, 3], [1.0, 2, 3]):
        r = httpx.post(submit, json={**body, "ranks": bad}, headers=label_headers())
        assert r.status_code in (400, 422), (bad, r.text)
    assert httpx.post(submit, json={**body, "extra": 1}, headers=label_headers()).status_code == 422
    ok = httpx.post(submit, json=body, headers=label_headers(origin=url))
    assert ok.status_code == 200, ok.text
    again = httpx.post(submit, json=body, headers=label_headers(origin=url))
    assert again.status_code == 404  # one submission per task
    rows = LabelStore(db).rows()
    assert len(rows) == before + 1
    row = rows[-1]
    assert (row.prompt, row.completions, row.ranks, row.ties, row.labeler) == (
        task["prompt"], task["completions"], [2, 1, 2], True, "<b>bob</b>",
    )  # fmt: skip


def test_concurrent_label_submissions_are_all_stored(server: tuple[str, Path]) -> None:
    url, db = server
    before = LabelStore(db).count()
    with httpx.Client(base_url=url, headers=label_headers(), timeout=60) as client:
        tasks = [client.get("/api/label/task").json()["task_id"] for _ in range(12)]

    def post(task_id: str) -> int:
        return httpx.post(url + "/api/label/submit", json={"task_id": task_id, "ranks": [1, 2, 3]},
                          headers=label_headers(), timeout=60).status_code  # fmt: skip

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(post, tasks)) == [200] * 12
    assert LabelStore(db).count() == before + 12


def test_api_key_is_enforced_when_set(tok: Tokenizer, tmp_path: Path) -> None:
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)).eval()
    app = create_app(Engine(model, tok), ServeOptions(model_name=MODEL, api_key="k1"))
    with ServerThread(app) as s:
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert (
            httpx.get(s.url + "/api/label/task", headers=label_headers()).status_code == 404
        )  # labeling off
