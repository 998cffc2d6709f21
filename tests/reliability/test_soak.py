"""Soak: `picochat serve` as a real process on loopback, under a mix of concurrent traffic for a fixed
time: well-formed chats (plain and streamed), streams the client drops halfway, labeling round trips,
and malformed requests of every kind. Asserted: no 5xx ever, every well-formed request answered, every
accepted label stored, the process alive and answering at the end, its resident memory (RSS) flat after
warm-up, the latency of a well-formed client not blown up by the junk, and a clean exit on SIGINT.
(tests/test_serve_robust.py fuzzes 520 malformed requests one by one against an in-process server.)
"""

from __future__ import annotations

import json
import random
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from picochat.checkpoint import save_checkpoint
from picochat.model import GPT, GPTConfig
from picochat.serve.labels import LabelStore

MODEL = "m"
TOKEN = "soak-token"
RSS_GROWTH_LIMIT_MB = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def chat(content: str, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def malformed(rng: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
    """One request that is wrong in at least one way."""
    json_h = {"content-type": "application/json"}
    kind = rng.randrange(10)
    if kind == 0:
        return "POST", "/v1/chat/completions", rng.choice([b"{", b"[1,", b"\xff\xfe", b"", b"nul"]), json_h
    if kind == 1:
        field, value = rng.choice([("max_tokens", -3), ("max_tokens", 10**9), ("temperature", "hot"),
                                   ("n", 99), ("top_p", 0), ("stop", [1]), ("seed", -1), ("stream", "yes")])  # fmt: skip
        return "POST", "/v1/chat/completions", json.dumps(chat("hi", **{field: value})).encode(), json_h
    if kind == 2:
        messages = rng.choice([[], [{"role": "robot", "content": "x"}], [{"content": 3}], "hi"])
        return (
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": MODEL, "messages": messages}).encode(),
            json_h,
        )
    if kind == 3:
        return "POST", "/v1/completions", b'{"prompt": "' + b"a" * 1_100_000 + b'"}', json_h
    if kind == 4:
        body = json.dumps({"model": MODEL, "prompt": "word " * 400, "max_tokens": 8}).encode()
        return "POST", "/v1/completions", body, json_h
    if kind == 5:
        return "POST", "/v1/chat/completions", json.dumps(chat("hi", model="other")).encode(), json_h
    if kind == 6:
        path = rng.choice(["/static/../../etc/passwd", "/static/..%2F..%2Fapp.py", "/static/%00", "/v2/x"])
        return "GET", path, b"", {}
    if kind == 7:
        return rng.choice(["PUT", "DELETE", "PATCH"]), "/v1/chat/completions", b"{}", json_h
    if kind == 8:
        headers = rng.choice([{}, {"X-Label-Token": "wrong"}])
        return "GET", "/api/label/task", b"", headers
    body = json.dumps({"task_id": "nope", "ranks": [1, 2, 3, 4]}).encode()
    headers = rng.choice([{**json_h, "X-Label-Token": TOKEN, "Origin": "http://evil.example"},
                          {**json_h, "X-Label-Token": "wrong"}])  # fmt: skip
    return "POST", "/api/label/submit", body, headers


class Soak:
    """Shared tallies of the traffic threads."""

    def __init__(self, url: str, seconds: float) -> None:
        self.url, self.deadline = url, time.monotonic() + seconds
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.labels_stored = 0

    def count(self, kind: str, status: int, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.statuses[f"{kind}:{status}"] += 1
            if not ok:
                self.failures.append(f"{kind} -> {status} {detail[:200]}")

    def loop(self, body: Callable[[httpx.Client, random.Random], None], seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while time.monotonic() < self.deadline:
                try:
                    body(client, rng)
                except httpx.HTTPError as e:  # the server dropped a well-formed request: a failure
                    with self.lock:
                        self.failures.append(f"{body.__name__}: {type(e).__name__} {e}")

    def plain_chat(self, client: httpx.Client, rng: random.Random) -> None:
        t0 = time.perf_counter()
        r = client.post(
            "/v1/chat/completions", json=chat("hello", max_tokens=rng.randint(1, 12), seed=rng.randint(0, 9))
        )
        with self.lock:
            self.latencies.append(time.perf_counter() - t0)
        self.count("chat", r.status_code, r.status_code == 200 and len(r.json()["choices"]) == 1, r.text)

    def streamed_chat(self, client: httpx.Client, rng: random.Random) -> None:
        drop = rng.random() < 0.5  # half the streams are abandoned after the first event
        body = chat("tell me", max_tokens=rng.randint(4, 24), stream=True, n=rng.randint(1, 2))
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if drop:
                        break
        ok = r.status_code == 200 and (drop or events[-1] == "[DONE]")
        self.count("stream-dropped" if drop else "stream", r.status_code, ok)

    def junk(self, client: httpx.Client, rng: random.Random) -> None:
        method, path, body, headers = malformed(rng)
        r = client.request(method, path, content=body, headers=headers)
        self.count(
            "malformed", r.status_code, 400 <= r.status_code < 500, f"{method} {path} {body[:80]!r} {r.text}"
        )

    def label(self, client: httpx.Client, rng: random.Random) -> None:
        headers = {"X-Label-Token": TOKEN}
        task = client.get("/api/label/task", headers=headers)
        self.count("label-task", task.status_code, task.status_code == 200, task.text)
        if task.status_code != 200:
            return
        k = len(task.json()["completions"])
        ranks = list(range(1, k + 1))
        rng.shuffle(ranks)
        r = client.post(
            "/api/label/submit", json={"task_id": task.json()["task_id"], "ranks": ranks}, headers=headers
        )
        self.count("label-submit", r.status_code, r.status_code == 200, r.text)
        if r.status_code == 200:
            with self.lock:
                self.labels_stored += 1


@pytest.fixture
def server(cli, tok, tmp_path: Path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "ckpt", GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=128)), tok
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 + 2?\nSay hi.\nName a colour.\n")
    port = free_port()
    proc = cli.start("serve", "--ckpt", str(ckpt), "--port", str(port), "--threads", "1", "--model-name", MODEL,
                     "--label-token", TOKEN, "--db", str(tmp_path / "labels.db"), "--max-batch", "8",
                     "--label-prompts", str(prompts))  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "server exited at start"
        try:
            if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)
    yield proc, url, tmp_path / "labels.db"
    if proc.poll() is None:
        proc.kill()
    cli.finish(proc)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def run_phase(url: str, seconds: float, workers: list[str], pid: int) -> tuple[Soak, list[float]]:
    """Run the named Soak methods on one thread each for `seconds`; returns the tallies and RSS samples."""
    s = Soak(url, seconds)
    threads = [threading.Thread(target=s.loop, args=(getattr(s, w), i)) for i, w in enumerate(workers)]
    rss: list[float] = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append(rss_mb(pid))
        time.sleep(0.25)
    for t in threads:
        t.join()
    return s, rss


def stacks_of(proc, cli) -> str:
    """Ask a hung server for every thread's stack (faulthandler on SIGABRT) and return its stderr."""
    proc.send_signal(signal.SIGABRT)
    _, _, err = cli.finish(proc, timeout=30)
    return err[-6000:]


def check_phase(phase: tuple[Soak, list[float]], proc, cli) -> tuple[Soak, list[float]]:
    s, _ = phase
    if s.failures:
        raise AssertionError(f"{s.failures[:10]}\nserver stacks:\n{stacks_of(proc, cli)}")
    assert not [k for k in s.statuses if int(k.split(":")[1]) >= 500]
    return phase


def soak(server, cli, seconds: float) -> dict:
    """Three phases: a well-formed client alone (baseline latency), the same client beside malformed
    traffic only (its p99 must hold), then `seconds` of the full mix (memory must stay flat)."""
    proc, url, db = server
    alone, _ = check_phase(run_phase(url, 3, ["plain_chat"], proc.pid), proc, cli)
    junk, _ = check_phase(run_phase(url, 5, ["plain_chat", "junk", "junk"], proc.pid), proc, cli)
    mixed = ["plain_chat", "streamed_chat", "streamed_chat", "junk", "junk", "label"]
    mix, rss = check_phase(run_phase(url, seconds, mixed, proc.pid), proc, cli)

    assert proc.poll() is None, "the server died"
    assert (
        httpx.post(
            url + "/v1/chat/completions", json=chat("still there?", max_tokens=4), timeout=60
        ).status_code
        == 200
    )
    assert LabelStore(db).count() == mix.labels_stored  # every accepted ranking is in the database
    warm = rss[len(rss) // 4 : len(rss) // 2]  # after warm-up (allocator pools, first batches)
    growth = max(rss[len(rss) // 2 :]) - statistics.median(warm)
    assert growth < RSS_GROWTH_LIMIT_MB, (
        f"RSS grew {growth:.0f} MB during the soak ({rss[0]:.0f} -> {rss[-1]:.0f})"
    )
    p99_alone, p99_junk = p99(alone.latencies), p99(junk.latencies)
    assert p99_junk < 5 * p99_alone + 2.0, (p99_alone, p99_junk)  # loose: the machine may be shared

    proc.send_signal(signal.SIGINT)
    code, _, err = cli.finish(proc, timeout=60)
    assert code == 0, err[-2000:]
    statuses = alone.statuses + junk.statuses + mix.statuses
    return {"requests": sum(statuses.values()), "malformed": sum(v for k, v in statuses.items() if k.startswith("malformed")),
            "statuses": dict(statuses), "rss_mb": (rss[0], max(rss), rss[-1]), "growth_mb": growth,
            "p99_alone_s": p99_alone, "p99_beside_junk_s": p99_junk, "p99_mix_s": p99(mix.latencies),
            "labels": mix.labels_stored}  # fmt: skip


def test_soak_20s_mixed_traffic(server, cli) -> None:
    stats = soak(server, cli, seconds=20)
    print("soak:", json.dumps(stats))
    assert stats["malformed"] > 500 and {"malformed:400", "malformed:413", "malformed:422"} <= set(
        stats["statuses"]
    )
    assert stats["labels"] > 0 and stats["statuses"].get("stream-dropped:200", 0) > 0


@pytest.mark.slow
def test_soak_90s_mixed_traffic(server, cli) -> None:
    stats = soak(server, cli, seconds=90)
    print("soak:", json.dumps(stats))
