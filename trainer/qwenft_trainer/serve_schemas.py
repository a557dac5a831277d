"""Request and response bodies of the OpenAI chat completions API that the server accepts.

Only what a chat client sends is modelled; unknown fields are ignored, as OpenAI-compatible
servers do, except ``n`` other than 1, which the server can't honour and refuses. The
vLLM extension ``ignore_eos`` is accepted for benchmarks. Text the model reads must be
text: a JSON escape such as ``\ud800`` without the other half of its surrogate pair is
refused with the field it is in, as is a seed the random generators can't take.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwenft_trainer.formats import Role

# A request's roles: the dataset's, and "developer", OpenAI's newer name for the system prompt.
RequestRole = Literal[Role, "developer"]
# Seeds reach Python's, NumPy's and torch's generators; NumPy takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def require_text(value: str) -> str:
    """``value``, unless it holds a lone surrogate, which no tokenizer can encode."""
    found = _SURROGATE.search(value)
    if found is not None:
        raise ValueError(
            f"the escape \\u{ord(found.group()):04x} is half of a UTF-16 surrogate pair, not a "
            "character; send the character itself (or both escapes of its pair)"
        )
    return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _is_text(cls, value: str) -> str:
        return require_text(value)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: RequestRole
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _is_text(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        return require_text(value) if isinstance(value, str) else value

    def as_template_message(self) -> dict[str, str]:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request.")
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        for stop in [value] if isinstance(value, str) else value or []:
            require_text(stop)
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    # A message may quote the request; keep it encodable whatever the client sent.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chunk(
    cid: str, model: str, created: int, delta: dict[str, str], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
