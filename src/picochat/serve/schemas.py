"""Request bodies of the OpenAI-compatible API and the labeling API, as strict pydantic models.

Follows the OpenAI REST reference for `/v1/chat/completions` and `/v1/completions` (the fields picochat
can honour). Deviations: `top_k`, `logprobs`, penalties and tools are not supported; unknown fields are
ignored (OpenAI clients send many optional ones); numbers are strict (a JSON string is not a number), so
wrong types give 422 instead of being coerced; `n` is at most `MAX_N` and `stop` holds at most 4 strings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 8  # answers per request
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_TEXT_CHARS = 32_000  # one message or prompt
MAX_MESSAGES = 256
MAX_PROMPTS = 16  # /v1/completions with a list of prompts
MAX_SEED = 2**63 - 1

API_MODEL_CONFIG = ConfigDict(extra="ignore", strict=True)  # clients send optional fields we do not use


class ChatMessage(BaseModel):
    model_config = API_MODEL_CONFIG
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class StreamOptions(BaseModel):
    model_config = API_MODEL_CONFIG
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by both endpoints."""

    model_config = API_MODEL_CONFIG
    model: str | None = Field(default=None, max_length=256)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple; raises ValueError for empty, too long or too many stop strings."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop has {len(stops)} strings; at most {MAX_STOP} are allowed")
        for s in stops:
            if not s or len(s) > 256:
                raise ValueError(f"each stop string must have 1 to 256 characters, got {len(s)}")
        return tuple(stops)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)  # newer clients' name


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]

    def prompts(self) -> list[str]:
        """`prompt` as a list; raises ValueError for an empty list, too many or too long prompts."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(
                f"prompt must be a string or a list of 1 to {MAX_PROMPTS} strings, got {len(prompts)}"
            )
        for p in prompts:
            if len(p) > MAX_TEXT_CHARS:
                raise ValueError(f"a prompt has {len(p)} characters; at most {MAX_TEXT_CHARS} are allowed")
        return prompts


class LabelSubmission(BaseModel):
    """A person's ranking of the K answers of one labeling task (rank 1 = best, ties share a rank)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ranks: list[int] = Field(min_length=1, max_length=64)
    all_bad: bool = False
    labeler: str = Field(default="", max_length=64)
