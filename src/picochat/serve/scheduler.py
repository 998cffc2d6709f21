"""Dynamic batching: concurrent generation requests share one batched decode on a worker thread.

One background thread owns the model. Requests enter a queue; the worker waits `batch_window_s` after
the first arrival so that concurrent requests can join, then takes every waiting request that is
compatible with the first (same temperature and top-p, the batch fits the context window and
`max_batch` rows) and runs them as one `Engine.generate_tokens` batch: one forward pass per step for
all rows. Each row has its own stop strings, `max_tokens` and detokenizer (`TextStreamer`); pieces of
text go back to the request's asyncio queue with `loop.call_soon_threadsafe`. A request whose client
went away is marked cancelled: its rows stop being emitted, and the batch ends as soon as every row in
it is finished or cancelled.

This is dynamic (request-level) batching as in Triton/TF-Serving batchers, not the continuous
(iteration-level) batching of Orca (Yu et al., OSDI 2022): a request that arrives while a batch runs
waits for that batch to finish, and a row that hit its stop string keeps its slot (its tokens are
dropped) until the whole batch ends. A request with a `seed` runs in a batch of its own, so the same
seed gives the same text whatever else the server is doing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from picochat.engine import Engine, SamplingParams, TextStreamer


@dataclass(frozen=True, slots=True, kw_only=True)
class GenRequest:
    """One prompt to answer `n` times. `max_tokens` must fit the context with the prompt."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def batch_key(self) -> tuple:
        """Requests with equal keys may share a batch (one SamplingParams and one generator per batch)."""
        if self.seed is not None:
            return ("seeded", id(self))
        return ("shared", self.temperature, self.top_p)


@dataclass(frozen=True, slots=True)
class Piece:
    """New text for answer `index`; `finish_reason` ("stop" or "length") is set on its last piece."""

    index: int
    text: str
    finish_reason: str | None
    n_tokens: int  # tokens generated so far for this answer


class SchedulerError(RuntimeError):
    """The worker failed while decoding this request (a bug or an out-of-memory, not bad input)."""


class Ticket:
    """The handle of one submitted request: async iteration over its pieces, and cancellation."""

    def __init__(self, request: GenRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self._loop = loop
        self._queue: asyncio.Queue[Piece | BaseException] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def emit(self, item: Piece | BaseException) -> None:
        """Called from the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    async def pieces(self) -> AsyncIterator[Piece]:
        """Pieces in order until all n answers are finished; cancels the request if the caller stops early."""
        remaining = self.request.n
        try:
            while remaining:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise SchedulerError(f"generation failed: {item}") from item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            if remaining:
                self.cancel()


class Scheduler:
    """Owns the engine on a worker thread; `submit` from an asyncio event loop."""

    def __init__(self, engine: Engine, *, max_batch: int = 32, batch_window_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.block_size = engine.model.config.block_size
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "batches": 0, "rows": 0, "max_rows": 0, "cancelled": 0, "tokens": 0}

    def start(self) -> None:
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="picochat-scheduler", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            for ticket in self._waiting:
                ticket.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def check(self, request: GenRequest) -> None:
        """Raise ValueError if the request can never run (prompt + max_tokens beyond the context, bad n)."""
        if request.n < 1 or request.n > self.max_batch:
            raise ValueError(f"n={request.n} answers requested; this server allows 1 to {self.max_batch}")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        total = len(request.prompt_ids) + request.max_tokens
        if not request.prompt_ids or total > self.block_size:
            raise ValueError(
                f"the prompt has {len(request.prompt_ids)} tokens and max_tokens is {request.max_tokens}: "
                f"{total} tokens do not fit this model's {self.block_size}-token context; "
                "shorten the prompt or lower max_tokens"
            )

    def submit(self, request: GenRequest) -> Ticket:
        """Queue a request (call from a running event loop); iterate `ticket.pieces()` for the answer."""
        self.check(request)
        if self._thread is None:
            raise RuntimeError("the scheduler is not running; call start() first")
        ticket = Ticket(request, asyncio.get_running_loop())
        with self._cond:
            self._waiting.append(ticket)
            self.stats["requests"] += 1
            self._cond.notify()
        return ticket

    # -- worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(self.batch_window_s)  # let requests that arrive together share the batch
            batch = self._take_batch()
            if not batch:
                continue
            try:
                self._decode(batch)
            except Exception as e:  # report to the waiting clients instead of killing the worker
                for ticket in batch:
                    ticket.emit(e)

    def _take_batch(self) -> list[Ticket]:
        """The first waiting request and every later one that can share its batch."""
        with self._cond:
            live = [t for t in self._waiting if not t.cancelled]
            self.stats["cancelled"] += len(self._waiting) - len(live)
            if not live:
                self._waiting.clear()
                return []
            key = live[0].request.batch_key()
            batch: list[Ticket] = []
            rows = longest = max_new = 0
            rest: collections.deque[Ticket] = collections.deque()
            for t in live:
                r = t.request
                new_longest, new_max = max(longest, len(r.prompt_ids)), max(max_new, r.max_tokens)
                fits = rows + r.n <= self.max_batch and new_longest + new_max <= self.block_size
                if r.batch_key() == key and (fits or not batch):
                    batch.append(t)
                    rows, longest, max_new = rows + r.n, new_longest, new_max
                else:
                    rest.append(t)
            self._waiting = rest
            return batch

    def _decode(self, batch: list[Ticket]) -> None:
        owners = [(t, i) for t in batch for i in range(t.request.n)]  # row -> (ticket, answer index)
        first = batch[0].request
        params = SamplingParams(
            max_new_tokens=max(t.request.max_tokens for t in batch),
            temperature=first.temperature,
            top_p=first.top_p,
        )
        stop_ids = self.engine.default_stop_ids
        streamers = [TextStreamer(self.engine.tok, t.request.stop, stop_ids) for t, _ in owners]
        counts = [0] * len(owners)
        done = [False] * len(owners)
        self.stats["batches"] += 1
        self.stats["rows"] += len(owners)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(owners))
        steps = self.engine.generate_tokens(
            [t.request.prompt_ids for t, _ in owners], params, seed=first.seed
        )
        with contextlib.closing(steps):
            for step in steps:
                for row, token in step:
                    if not done[row]:
                        done[row] = self._advance(owners[row], streamers[row], token, counts, row)
                if all(d or t.cancelled for d, (t, _) in zip(done, owners, strict=True)):
                    break
        for row, (ticket, index) in enumerate(owners):  # rows the engine ended without a stop token
            if not done[row] and not ticket.cancelled:
                ticket.emit(Piece(index, streamers[row].flush(), "length", counts[row]))
        self.stats["cancelled"] += sum(1 for t in batch if t.cancelled)

    def _advance(
        self, owner: tuple[Ticket, int], streamer: TextStreamer, token: int, counts: list[int], row: int
    ) -> bool:
        """Feed one token to a row; emit its new text; return True when the row is finished."""
        ticket, index = owner
        if ticket.cancelled:
            return True
        counts[row] += 1
        self.stats["tokens"] += 1
        piece = streamer.push(token)
        finish = None
        if streamer.finished:
            finish = "stop"
        elif counts[row] >= ticket.request.max_tokens:
            finish = "length"
            piece += streamer.flush()
        if piece or finish:
            ticket.emit(Piece(index, piece, finish, counts[row]))
        return finish is not None
