"""The OpenAI-compatible server (qwenft serve) over real HTTP on loopback.

Each test talks to a uvicorn server in a thread with the official ``openai`` client (or
httpx for raw bodies). Covers: /v1/models; non-streaming and SSE streaming completions
that equal a direct ``generate`` over the tokenizer's chat template; multi-turn history;
adapter selection by model name, also with concurrent requests for different adapters;
stop sequences; seeded sampling; OpenAI-style errors 400 (malformed JSON, invalid fields,
prompt longer than the context), 404 (unknown model), 429 (saturated) and 503 (model still
loading, /readyz), and the Prometheus series of docs/metrics.md. Malformed bodies (lone
surrogate escapes in content, text parts and stop, nesting 100k deep, bytes that are not
UTF-8, numbers too long to convert, seeds out of range) get a 400 naming the cause; a UTF-8
byte-order mark is accepted. Properties (Hypothesis, derandomized, in process through
FastAPI's TestClient): any JSON body gets 2xx or an OpenAI-style 4xx, any bytes a 4xx.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import event, given, settings
from hypothesis import strategies as st
from qwenft_trainer.generation import Engine, EngineConfig, load_engine
from qwenft_trainer.serve_app import ServerLimits, create_app
from support import poll
from transformers import AutoModelForCausalLM, AutoTokenizer

HELLO = [{"role": "user", "content": "Hello! How can I help you today?"}]
HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "中国的首都是北京。"},
]
GREEDY = {"temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


@contextmanager
def running(loader: Callable[[], Engine], limits: ServerLimits | None = None) -> Iterator[str]:
    """Serve ``create_app(loader)`` on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(loader, limits), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    poll(lambda: server.started, timeout=30, what="the server to start", interval=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_ready(url: str, timeout: float = 60) -> None:
    poll(
        lambda: httpx.get(f"{url}/readyz").status_code == 200,
        timeout=timeout,
        what="the server on /readyz",
        interval=0.05,
    )


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def long_stream(api: openai.OpenAI) -> Any:
    """A streamed answer of 1500 tokens that ignores EOS: it holds a slot for a while."""
    return api.chat.completions.create(
        model="tiny",
        messages=HELLO,
        temperature=0,
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )


@pytest.fixture(scope="module")
def adapters(make_adapter: Callable[..., Path]) -> dict[str, Path]:
    return {
        "support": make_adapter("serve-support", r=8, seed=11, scale=0.3),
        "sql": make_adapter("serve-sql", r=16, seed=12, scale=0.3),
    }


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, adapters: dict[str, Path]) -> Iterator[str]:
    config = EngineConfig(
        model=str(tiny_model_dir),
        served_model_name="tiny",
        adapters={name: str(path) for name, path in adapters.items()},
        max_model_len=256,
    )
    with running(lambda: load_engine(config), ServerLimits(max_concurrency=2)) as url:
        wait_ready(url)
        yield url


def direct_greedy(model_dir: Path, messages: list[dict[str, str]], tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_models_lists_base_and_adapters(server: str) -> None:
    assert [m.id for m in client(server).models.list()] == ["tiny", "support", "sql"]


def test_completion_equals_generate_over_the_chat_template(
    server: str, tiny_model_dir: Path
) -> None:
    reply = client(server).chat.completions.create(model="tiny", messages=HELLO, **GREEDY)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert choice.message.content == direct_greedy(tiny_model_dir, HELLO, 12)


def test_streaming_matches_non_streaming(server: str) -> None:
    api = client(server)
    plain = api.chat.completions.create(model="support", messages=HISTORY, **GREEDY)
    stream = api.chat.completions.create(
        model="support",
        messages=HISTORY,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([p for p in pieces if p]) > 1, "text must arrive in several chunks"
    assert "".join(pieces) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_history_is_part_of_the_prompt(server: str) -> None:
    api = client(server)
    short = api.chat.completions.create(model="tiny", messages=HISTORY[-1:], **GREEDY)
    full = api.chat.completions.create(model="tiny", messages=HISTORY, **GREEDY)
    assert short.usage is not None and full.usage is not None
    assert full.usage.prompt_tokens > short.usage.prompt_tokens + 10


def test_model_field_selects_the_adapter(server: str) -> None:
    api = client(server)

    def ask(name: str) -> str:
        reply = api.chat.completions.create(model=name, messages=HELLO, **GREEDY)
        return str(reply.choices[0].message.content)

    sequential = {name: ask(name) for name in ("tiny", "support", "sql")}
    assert len(set(sequential.values())) == 3, sequential
    # Interleaved concurrent requests for different adapters get the same answers.
    order = ["support", "sql", "tiny", "sql", "support", "tiny"] * 2
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, order))
    assert answers == [sequential[name] for name in order]


def test_stop_sequence_cuts_the_answer(server: str) -> None:
    api = client(server)
    full = str(
        api.chat.completions.create(model="sql", messages=HELLO, **GREEDY)
        .choices[0]
        .message.content
    )
    stop = full[4:7]
    expected = full[: full.find(stop)]
    reply = api.chat.completions.create(model="sql", messages=HELLO, stop=[stop], **GREEDY)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    stream = api.chat.completions.create(
        model="sql", messages=HELLO, stop=stop, stream=True, **GREEDY
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_seed_makes_sampling_reproducible(server: str) -> None:
    api = client(server)

    def sample(seed: int) -> str:
        reply = api.chat.completions.create(
            model="support",
            messages=HELLO,
            temperature=1.0,
            top_p=0.95,
            max_tokens=16,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return str(reply.choices[0].message.content)

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def test_bad_requests_get_openai_errors(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    json_header = {"content-type": "application/json"}
    malformed = httpx.post(url, content=b'{"model": "tiny", "messages": [', headers=json_header)
    assert "not valid JSON" in str(_error(malformed, 400)["message"])
    not_object = httpx.post(url, content=b"[1, 2]", headers=json_header)
    assert "JSON object" in str(_error(not_object, 400)["message"])
    missing = httpx.post(url, json={"model": "tiny"})
    assert _error(missing, 400)["param"] == "messages"
    two = httpx.post(url, json={"model": "tiny", "messages": HELLO, "n": 2})
    assert _error(two, 400)["param"] == "n"

    api = client(server)
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello " * 300}]
        )
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="lower max_tokens"):
        api.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1000)
    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert unknown.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi\\ud800"}]}',
         "messages.0.content", "the escape \\ud800 is half of a UTF-16 surrogate pair"),
        (b'{"model": "tiny", "messages": [{"role": "user", '
         b'"content": [{"type": "text", "text": "\\udfff"}]}]}',
         "messages.0.content.0.text", "the escape \\udfff is half"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stop": ["\\ud83d"]}',
         "stop", "surrogate pair"),
        (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, None, "nested too deeply"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "Ol\xe1"}]}',
         None, "not UTF-8 text (byte 0xE1 at offset 62)"),
        (b'{"model": "tiny", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}",
         None, "a number longer than 4300 digits"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "seed": -1}',
         "seed", "greater than or equal to 0"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "seed": 4294967296}',
         "seed", "less than or equal to 4294967295"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_400_naming_the_cause(
    server: str, body: bytes, param: str | None, words: str
) -> None:
    url = f"{server}/v1/chat/completions"
    error = _error(httpx.post(url, content=body, headers={"content-type": "application/json"}), 400)
    assert error["param"] == param
    assert words in str(error["message"])


def test_utf8_byte_order_mark_in_a_body_is_accepted(server: str) -> None:
    body = json.dumps({"model": "tiny", "messages": HELLO, "max_tokens": 2}).encode()
    reply = httpx.post(
        f"{server}/v1/chat/completions",
        content=b"\xef\xbb\xbf" + body,
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 2


def test_metrics_use_the_documented_names(server: str) -> None:
    api = client(server)
    api.chat.completions.create(model="sql", messages=HELLO, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="nope", messages=HELLO)
    text = httpx.get(f"{server}/metrics").text
    for line in (
        'qwenft_serve_requests_total{model="sql",status="200"}',
        'qwenft_serve_requests_total{model="unknown",status="404"}',
        'qwenft_serve_request_duration_seconds_bucket{le="0.05",model="sql"}',
        'qwenft_serve_prompt_tokens_total{model="sql"}',
        'qwenft_serve_generated_tokens_total{model="sql"}',
        "qwenft_serve_in_flight_requests 0.0",
    ):
        assert line in text, line


def test_saturated_server_answers_429(tiny_model_dir: Path) -> None:
    config = EngineConfig(model=str(tiny_model_dir), served_model_name="tiny")
    limits = ServerLimits(max_concurrency=1, max_queue=0)
    with running(lambda: load_engine(config), limits) as url:
        wait_ready(url)
        api = client(url)
        long = long_stream(api)
        first = next(iter(long))  # admitted and generating: the one slot is taken
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.RateLimitError) as err:
            api.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
        assert err.value.code == "rate_limit_exceeded"
        long.close()
        poll(
            lambda: "qwenft_serve_in_flight_requests 0.0" in httpx.get(f"{url}/metrics").text,
            timeout=60,
            what="the closed stream's slot to be released",
            interval=0.05,
        )
        reply = api.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
        assert reply.choices[0].message.content is not None


def test_503_until_the_model_is_loaded(tiny_model_dir: Path) -> None:
    release = threading.Event()
    config = EngineConfig(model=str(tiny_model_dir), served_model_name="tiny")

    def slow_loader() -> Engine:
        assert release.wait(60)
        return load_engine(config)

    with running(slow_loader) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert _error(httpx.get(f"{url}/readyz"), 503)["code"] == "model_not_ready"
        with pytest.raises(openai.InternalServerError) as err:
            client(url).chat.completions.create(model="tiny", messages=HELLO)
        assert err.value.status_code == 503
        release.set()
        wait_ready(url)
        reply = client(url).chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
        assert reply.model == "tiny"


def test_queued_requests_are_batched_with_the_same_answers(tiny_model_dir: Path) -> None:
    config = EngineConfig(model=str(tiny_model_dir), served_model_name="tiny")
    batch_sizes: list[int] = []

    def loader() -> Engine:
        engine = load_engine(config)
        generate_batch = engine.generate_batch

        def recording(name: str, prompts: list[list[int]], *args: object, **kw: object) -> object:
            batch_sizes.append(len(prompts))
            return generate_batch(name, prompts, *args, **kw)  # type: ignore[arg-type]

        engine.generate_batch = recording  # type: ignore[method-assign]
        return engine

    questions = [HELLO, HISTORY, HISTORY[-1:], [{"role": "user", "content": "Hi"}]]
    with running(loader, ServerLimits(max_concurrency=1, max_batch_size=4)) as url:
        wait_ready(url)
        api = client(url)

        def ask(messages: list[dict[str, str]]) -> str:
            reply = api.chat.completions.create(model="tiny", messages=messages, **GREEDY)
            return str(reply.choices[0].message.content)

        alone = [ask(q) for q in questions]
        assert batch_sizes == [1, 1, 1, 1]
        # Hold the only slot with a stream, queue four requests behind it, then let go.
        hold = long_stream(api)
        next(iter(hold))
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(ask, q) for q in questions]
            poll(
                lambda: "qwenft_serve_in_flight_requests 5.0" in httpx.get(f"{url}/metrics").text,
                timeout=60,
                what="five requests in flight",
                interval=0.02,
            )
            hold.close()
            together = [f.result() for f in futures]
    assert batch_sizes[4:] == [1, 4], batch_sizes  # the stream, then one batch of four
    assert together == alone


def test_command_line_rejects_bad_adapters(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwenft_trainer.serve import main

    model = str(tiny_model_dir)
    assert main(["--model", model, "--adapter", f"x={tmp_path / 'nope'}"]) == 2
    assert "adapter directory not found" in capsys.readouterr().err
    clash = ["--model", model, "--served-model-name", "x", "--adapter", f"x={tmp_path}"]
    assert main(clash) == 2
    assert "must be unique" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", model, "--adapter", "no-equals-sign"])


# Properties: whatever JSON a client sends, the answer is 2xx or an OpenAI-style 4xx.

# Any text; surrogates (lone or paired) are rare among all characters, so some are added.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=8) | st.sampled_from(
    ["\ud800", "a\udfff", "\ud83d\ude00"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
PART = st.fixed_dictionaries(
    {}, optional={"type": st.just("text") | JSON_VALUES, "text": ANY_TEXT | JSON_VALUES}
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | JSON_VALUES,
        "content": ANY_TEXT | st.lists(PART, max_size=2) | JSON_VALUES,
    },
)
REQUEST_FIELDS = {
    "model": st.sampled_from(["tiny", "gpt-4o"]) | JSON_VALUES,
    "messages": st.lists(MESSAGE, max_size=3) | JSON_VALUES,
    "temperature": st.floats() | JSON_VALUES,
    "top_p": st.floats() | JSON_VALUES,
    "max_tokens": st.integers(-1, 6) | st.integers() | JSON_VALUES,
    "max_completion_tokens": st.integers(-1, 6) | JSON_VALUES,
    "stop": ANY_TEXT | st.lists(ANY_TEXT, max_size=5) | JSON_VALUES,
    "seed": st.integers() | JSON_VALUES,
    "stream": st.booleans() | JSON_VALUES,
    "stream_options": st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans() | JSON_VALUES}
    )
    | JSON_VALUES,
    "n": st.integers(0, 2) | JSON_VALUES,
    "ignore_eos": st.booleans() | JSON_VALUES,
}
REQUEST = st.fixed_dictionaries({}, optional=REQUEST_FIELDS)


# Requests of the right shape; text may hold lone surrogates and seeds any integer.
CHAT_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant"]),
        "content": ANY_TEXT
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": ANY_TEXT})),
    }
)
CHAT_REQUEST = st.fixed_dictionaries(
    {"model": st.just("tiny"), "messages": st.lists(CHAT_MESSAGE, min_size=1, max_size=3)},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "max_tokens": st.integers(1, 4),
        "stop": ANY_TEXT | st.lists(ANY_TEXT, max_size=4),
        "seed": st.integers() | st.sampled_from([-1, 2**32, 2**64]),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "ignore_eos": st.booleans(),
    },
)
# A chat request with one field replaced by anything at all.
ONE_FIELD_OFF = st.tuples(CHAT_REQUEST, st.sampled_from(sorted(REQUEST_FIELDS)), JSON_VALUES).map(
    lambda case: {**case[0], case[1]: case[2]}
)


@pytest.fixture(scope="module")
def in_process(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app in this process (no sockets: each example costs milliseconds)."""
    config = EngineConfig(model=str(tiny_model_dir), served_model_name="tiny", max_model_len=256)
    app = create_app(lambda: load_engine(config), ServerLimits(default_max_tokens=4))
    with TestClient(app) as api:  # unhandled exceptions in the app fail the test
        poll(
            lambda: api.get("/readyz").status_code == 200,
            timeout=60,
            what="the model to load",
            interval=0.05,
        )
        yield api


@settings(max_examples=40, derandomize=True, database=None, deadline=None)
@given(body=CHAT_REQUEST | ONE_FIELD_OFF | REQUEST | JSON_VALUES, ascii=st.booleans())
def test_any_json_body_gets_2xx_or_4xx(in_process: TestClient, body: object, ascii: bool) -> None:
    # ensure_ascii=False writes a lone surrogate as CESU-8 bytes, which aren't UTF-8.
    data = json.dumps(body, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    headers = {"content-type": "application/json"}
    response = in_process.post("/v1/chat/completions", content=data, headers=headers)
    event(f"status {response.status_code}")
    if response.status_code == 400:
        event(str(response.json()["error"]["message"])[:40])
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert "server_error" not in response.text and response.text.endswith("[DONE]\n\n")
    else:
        assert response.json()["object"] == "chat.completion"


@settings(max_examples=30, derandomize=True, database=None, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_get_a_4xx(in_process: TestClient, data: bytes) -> None:
    headers = {"content-type": "application/json"}
    response = in_process.post("/v1/chat/completions", content=data, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_revision_reaches_the_model_and_tokenizer_loaders(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``qwenft serve --revision`` loads the hub snapshot the run was trained on."""
    import transformers
    from qwenft_trainer import serve, serve_app

    asked: dict[str, list[object]] = {"tokenizer": [], "model": [], "config": []}

    def recording(kind: str, plain: Callable[..., Any]) -> Callable[..., Any]:
        def load(name: str, **kwargs: Any) -> Any:
            asked[kind].append(kwargs.pop("revision", None))
            return plain(str(tiny_model_dir), **kwargs)  # the hub is offline in tests

        return load

    tokenizer, model = transformers.AutoTokenizer, transformers.AutoModelForCausalLM
    monkeypatch.setattr(
        tokenizer, "from_pretrained", recording("tokenizer", tokenizer.from_pretrained)
    )
    monkeypatch.setattr(model, "from_pretrained", recording("model", model.from_pretrained))
    config = transformers.AutoConfig
    monkeypatch.setattr(config, "from_pretrained", recording("config", config.from_pretrained))
    loaded: list[Engine] = []
    monkeypatch.setattr(serve_app, "create_app", lambda loader, limits: loaded.append(loader()))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    assert serve.main(["--model", "Qwen/Qwen2.5-7B-Instruct", "--revision", "0123abc"]) == 0
    pinned_configs = list(asked["config"])
    assert serve.main(["--model", "Qwen/Qwen2.5-7B-Instruct"]) == 0
    pins = ["0123abc", None]
    assert (asked["tokenizer"], asked["model"]) == (pins, pins)
    # the architecture is read from the pinned config; the unpinned run reads no pin
    assert "0123abc" in pinned_configs
    assert "0123abc" not in asked["config"][len(pinned_configs) :]
    assert loaded[0].model_names[0] == "Qwen/Qwen2.5-7B-Instruct"
