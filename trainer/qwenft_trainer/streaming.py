"""Generated tokens as text pieces, one piece per token, for streamed chat completions.

transformers' text streamers hold text back until the next space (a heuristic meant for
printing words to a terminal), so a reply without spaces (code, Chinese punctuation runs,
a JSON blob) arrives in one piece at the end. An OpenAI-compatible stream sends each
token's text as soon as it is final. Only a trailing U+FFFD is held back: it is an
incomplete UTF-8 character that the next byte-level token may complete.
"""

from __future__ import annotations

from typing import Any

from transformers import AsyncTextIteratorStreamer

INCOMPLETE = "\ufffd"


class TokenStreamer(AsyncTextIteratorStreamer):
    """An async text iterator that yields each token's text as soon as it is final."""

    # Set by transformers' TextStreamer.__init__; declared for the type checker.
    token_cache: list[int]
    print_len: int
    next_tokens_are_prompt: bool

    def put(self, value: Any) -> None:
        if len(value.shape) > 1:
            if value.shape[0] > 1:
                raise ValueError("TokenStreamer streams one sequence at a time")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        final = len(text.rstrip(INCOMPLETE))
        if final > self.print_len:
            piece = text[self.print_len : final]
            self.print_len = final
            self.on_finalized_text(piece)


def token_streamer(tokenizer: Any) -> TokenStreamer:
    """A streamer for the reply only (the prompt is skipped), special tokens left out."""
    return TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
