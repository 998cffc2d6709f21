"""`picochat chat`: multi-turn chat with a checkpoint in the terminal, the answer streamed as it is sampled.

The conversation is kept as a list of messages and rendered with `Tokenizer.render_prompt` (the chat
template SFT trained on) before every answer; the model writes until <|end|>. When the rendered history
plus `max_new_tokens` no longer fits the context window, the oldest user/assistant exchanges are dropped
(the system prompt is always kept) and a notice says how many messages went. Commands: `/reset` clears
the history, `/exit` (or end of input, Ctrl-D) quits; Ctrl-C stops an answer being written. With
`--message` it prints one answer and exits.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from picochat.engine import Engine, SamplingParams
from picochat.tokenizer import Tokenizer

Message = dict[str, str]
PROMPT = "you> "
REPLY = "bot> "
COMMANDS = ("/reset", "/exit")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatOptions:
    """Sampling settings and the optional system prompt of a chat."""

    system: str = ""
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    max_new_tokens: int = 128
    seed: int | None = None


def fit_history(
    tok: Tokenizer, system: str, history: list[Message], block_size: int, max_new_tokens: int
) -> tuple[list[Message], int]:
    """The most recent messages whose prompt plus max_new_tokens fits block_size, and how many were dropped.

    `history` alternates user/assistant and ends with the user's new message; whole exchanges (a user
    message and its answer) are dropped from the front. The newest user message is always kept, even if
    it alone does not fit (the engine then keeps the end of the prompt).
    """
    head = [{"role": "system", "content": system}] if system else []
    kept = list(history)
    while len(kept) > 1 and len(tok.render_prompt(head + kept)) + max_new_tokens > block_size:
        kept = kept[2:] if len(kept) > 2 else kept[1:]
    return kept, len(history) - len(kept)


@dataclass
class ChatSession:
    """One conversation: its history and the engine that answers. `notify` prints notices."""

    engine: Engine
    options: ChatOptions
    notify: Callable[[str], None] = print
    history: list[Message] = field(default_factory=list)
    turns: int = 0

    def __post_init__(self) -> None:
        opts = self.options
        SamplingParams(
            max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
        )
        block = self.engine.model.config.block_size
        if self.options.max_new_tokens >= block:
            raise ValueError(
                f"max_new_tokens={self.options.max_new_tokens} leaves no room for the conversation in the "
                f"model's {block}-token context; use at most {block // 2}"
            )

    @property
    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.options.system}] if self.options.system else []
        return head + self.history

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str) -> Iterator[str]:
        """Add the user's message, stream the answer piece by piece, then add the answer to the history.

        If the caller stops early (or Ctrl-C interrupts), the unanswered user message is removed again.
        """
        tok, opts = self.engine.tok, self.options
        block = self.engine.model.config.block_size
        self.history.append({"role": "user", "content": text})
        self.history, dropped = fit_history(tok, opts.system, self.history, block, opts.max_new_tokens)
        if dropped:
            self.notify(f"[dropped the {dropped} oldest messages to fit the {block}-token context]")
        prompt = tok.render_prompt(self.messages)
        if len(prompt) + opts.max_new_tokens > block:
            self.notify(
                f"[the message is too long for the {block}-token context; the model sees its end only]"
            )
        seed = None if opts.seed is None else opts.seed + self.turns
        pieces: list[str] = []
        finished = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the notice above already said the prompt is cut
                for piece in self.engine.stream(
                    prompt, max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                    top_k=opts.top_k, top_p=opts.top_p, seed=seed,
                ):  # fmt: skip
                    pieces.append(piece)
                    yield piece
            finished = True
        finally:
            if finished:
                self.history.append({"role": "assistant", "content": "".join(pieces).strip()})
                self.turns += 1
            else:
                self.history.pop()


def answer_once(session: ChatSession, message: str, write: Callable[[str], None]) -> None:
    """Stream one answer to `message` through `write`, then a newline."""
    for piece in session.reply(message):
        write(piece)
    write("\n")


def read_line() -> str | None:
    """One line from the terminal, or None at end of input (Ctrl-D) or Ctrl-C."""
    try:
        return input(PROMPT)
    except (EOFError, KeyboardInterrupt):
        print()
        return None


def run_interactive(session: ChatSession, banner: str) -> None:
    """The read-answer loop until /exit or end of input."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input(), where available)

    def write(piece: str) -> None:
        print(piece, end="", flush=True)

    print(banner)
    while (line := read_line()) is not None:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            session.reset()
            print("[history cleared]")
            continue
        if text.startswith("/"):
            print(f"[unknown command {text.split()[0]}; commands: {', '.join(COMMANDS)}]")
            continue
        write(REPLY)
        try:
            answer_once(session, text, write)
        except KeyboardInterrupt:
            print("\n[answer stopped]")


def run_chat(ckpt: str, options: ChatOptions, message: str | None = None, device: str = "auto") -> None:
    """Load a checkpoint and chat: one answer to `message`, or the interactive loop when it is None."""
    from picochat.checkpoint import load_checkpoint
    from picochat.train.loop import resolve_device

    model, tok = load_checkpoint(ckpt, device=resolve_device(device))
    session = ChatSession(Engine(model, tok), options)
    if message is not None:
        answer_once(session, message, lambda piece: print(piece, end="", flush=True))
        return
    block = model.config.block_size
    run_interactive(
        session, f"picochat chat: {ckpt} ({block}-token context). /reset clears the history, /exit quits."
    )
