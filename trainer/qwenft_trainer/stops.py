"""OpenAI ``stop`` sequences: the answer ends before the first one, which is not returned.

``generate`` stops on a stop string only after producing it, so the text is cut here; when
streaming, text that could be the start of a stop string is held back until it can't be.
"""

from __future__ import annotations


def trim_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopFilter:
    """Streams text while holding back what could be the start of a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self._buffer += text
        trimmed, self.stopped = trim_at_stop(self._buffer, self._stops)
        if self.stopped:
            self._buffer = ""
            return trimmed
        ready = len(self._buffer) - self._hold
        out, self._buffer = self._buffer[: max(ready, 0)], self._buffer[max(ready, 0) :]
        return out

    def flush(self) -> str:
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out
