"""The serving engine: one loaded model, its named adapters, and thread-safe generation.

The HTTP layer (``serve_app``) runs each request's ``generate`` in a worker thread so the
event loop never blocks. Several threads then share one model, and two things in it are
global: the active PEFT adapter (``set_adapter`` switches it for every caller) and torch's
random generator (a seeded request must not interleave with other sampling). The
:class:`AdapterGate` admits requests in arrival order and lets them run together only
while they agree on both; switching adapters waits until the running requests finish.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from qwenft_trainer import architectures
from qwenft_trainer.config import DTYPE_NAMES, Precision
from qwenft_trainer.stops import trim_at_stop

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class EngineConfig:
    """What to load: a base or merged model (a hub id at ``revision``, or a directory),
    optional named adapters, where and how."""

    model: str
    served_model_name: str
    adapters: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    revision: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class AdapterGate:
    """FIFO admission of generations that share one model.

    A request enters when it is first in line and either nothing runs, or everything
    running uses the same adapter and neither side needs the model to itself. ``activate``
    is called with the adapter name while nothing runs.
    """

    def __init__(self, activate: Callable[[str], None]) -> None:
        self._activate = activate
        self._cond = threading.Condition()
        self._line: deque[tuple[object, str, bool]] = deque()
        self._active: str | None = None
        self._running = 0
        self._running_exclusive = False

    def _may_enter(self, ticket: object) -> bool:
        head, name, exclusive = self._line[0]
        if head is not ticket:
            return False
        if self._running == 0:
            return True
        return self._active == name and not exclusive and not self._running_exclusive

    @contextmanager
    def use(self, name: str, *, exclusive: bool = False) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._line.append((ticket, name, exclusive))
            self._cond.wait_for(lambda: self._may_enter(ticket))
            self._line.popleft()
            if self._active != name:
                self._activate(name)
                self._active = name
            self._running += 1
            self._running_exclusive = exclusive
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if self._running == 0:
                    self._running_exclusive = False
                self._cond.notify_all()


class Engine:
    """A loaded model that generates chat completions for its served names."""

    def __init__(
        self, model: Any, tokenizer: Any, *, config: EngineConfig, context_length: int
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.context_length = context_length
        self.gate = AdapterGate(self._activate)

    @property
    def model_names(self) -> list[str]:
        return [self.config.served_model_name, *self.config.adapters]

    def _activate(self, name: str) -> None:
        if not self.config.adapters:
            return
        if name == self.config.served_model_name:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(name)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids: the tokenizer's own chat template with a generation prompt."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _generation_config(self, params: SamplingParams, max_new_tokens: int) -> Any:
        gen = copy.deepcopy(self.model.generation_config)
        gen.max_new_tokens = max_new_tokens
        gen.do_sample = params.sampling
        gen.temperature = params.temperature if params.sampling else None
        gen.top_p = params.top_p if params.sampling else None
        gen.top_k = None
        gen.stop_strings = list(params.stop) or None
        if params.ignore_eos:
            gen.eos_token_id = None
        if gen.pad_token_id is None:
            gen.pad_token_id = self.tokenizer.pad_token_id
        return gen

    def generate(
        self,
        name: str,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        streamer: Any = None,
        cancelled: threading.Event | None = None,
    ) -> Completion:
        """Generate one completion; blocking, safe to call from several threads at once."""
        try:
            return self.generate_batch(
                name, [prompt_ids], params, streamer=streamer, cancelled=cancelled
            )[0]
        except BaseException:
            if streamer is not None:
                streamer.end()
            raise

    def generate_batch(
        self,
        name: str,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        *,
        streamer: Any = None,
        cancelled: threading.Event | None = None,
    ) -> list[Completion]:
        """Completions for several prompts in one left-padded ``generate`` call.

        All rows share the adapter and sampling settings of ``params`` (or of its first
        element); each row keeps its own ``max_tokens``.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, set_seed

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                stop = cancelled is not None and cancelled.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)

        rows = params if isinstance(params, list) else [params] * len(prompts)
        shared = rows[0]
        width = max(len(p) for p in prompts)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.tensor(
            [[pad] * (width - len(p)) + p for p in prompts], device=self.model.device
        )
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device
        )
        gen = self._generation_config(shared, max(r.max_tokens for r in rows))
        exclusive = shared.sampling and shared.seed is not None
        with self.gate.use(name, exclusive=exclusive), torch.inference_mode():
            if exclusive:
                set_seed(shared.seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=gen,
                tokenizer=self.tokenizer,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            )
        eos = set(_as_list(self.model.generation_config.eos_token_id))
        return [
            self._completion(output[i, width:].tolist(), len(prompts[i]), rows[i], eos)
            for i in range(len(prompts))
        ]

    def _completion(
        self, new_ids: list[int], prompt_len: int, params: SamplingParams, eos: set[int]
    ) -> Completion:
        new_ids = new_ids[: params.max_tokens]
        text, ended = trim_at_stop(
            self.tokenizer.decode(new_ids, skip_special_tokens=True), params.stop
        )
        if ended:
            # A row that stopped early is padded to the batch's length; drop the padding.
            while new_ids and new_ids[-1] == self.tokenizer.pad_token_id:
                new_ids.pop()
        elif not params.ignore_eos:
            end = next((i for i, t in enumerate(new_ids) if t in eos), None)
            if end is not None:
                new_ids, ended = new_ids[: end + 1], True
        done = ended or len(new_ids) < params.max_tokens
        return Completion(
            text=text,
            finish_reason="stop" if done else "length",
            prompt_tokens=prompt_len,
            completion_tokens=len(new_ids),
        )


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def load_engine(config: EngineConfig) -> Engine:
    """Load the model (and adapters) named by ``config``; slow, run it off the event loop."""
    import torch
    from transformers import AutoTokenizer

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: Any = "auto"
    if config.dtype != "auto":
        dtype = getattr(torch, DTYPE_NAMES[cast(Precision, config.dtype)])
    elif device.startswith("cuda"):
        dtype = torch.bfloat16
    print(f"[serve] loading {config.model} on {device}", file=sys.stderr, flush=True)
    pinned = {"revision": config.revision} if config.revision else {}
    tokenizer = AutoTokenizer.from_pretrained(config.model, **pinned)
    # The whole checkpoint: a merged Qwen3.5 model loads with its vision tower, as it was saved.
    model_class = architectures.model_class(architectures.read_architecture(config.model, **pinned))
    model = model_class.from_pretrained(config.model, dtype=dtype, device_map=device, **pinned)
    if config.adapters:
        from peft import PeftModel

        (first, first_path), *rest = config.adapters.items()
        model = PeftModel.from_pretrained(model, str(Path(first_path)), adapter_name=first)
        for name, path in rest:
            model.load_adapter(str(Path(path)), adapter_name=name)
    model.eval()
    text_config = model.config.get_text_config()
    context = config.max_model_len or int(
        getattr(text_config, "max_position_embeddings", 0) or tokenizer.model_max_length
    )
    return Engine(model, tokenizer, config=config, context_length=context)
