"""`pyntk serve` as a real process on 127.0.0.1, talked to with the `openai` client and `httpx`.

The server pretends the model was trained on 128 tokens (--original-context 128) so that requests
beyond the training context stay small: a request of up to 128 tokens runs unscaled in the
128-token bucket, a longer one with YaRN set up for its bucket (factor bucket/128).
"""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from pyntk.dynamic import Dynamic
from clirun import THREADS

pytestmark = [pytest.mark.model, pytest.mark.llama]

L0, MAX_CONTEXT = 128, 1024
START_TIMEOUT = 120  # seconds: loading on a busy 2-core machine


class Served:
    """A `pyntk serve` process; its stderr (the request log) collected line by line."""

    def __init__(self, model_path, *extra):
        cmd = [sys.executable, "-m", "pyntk.cli", "serve", str(model_path), "--port", "0",
               "--threads", str(THREADS), *map(str, extra)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = None
        deadline = time.monotonic() + START_TIMEOUT
        while self.url is None and time.monotonic() < deadline and self.proc.poll() is None:
            found = [re.search(r"on (http://127\.0\.0\.1:\d+)", line) for line in list(self.lines)]
            self.url = next((m.group(1) for m in found if m), None)
            time.sleep(0.05)
        if self.url is None:
            self.stop()
            pytest.fail(f"pyntk serve did not start: {self.log()}")

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", timeout=60, max_retries=0)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_idle(self, timeout=30.0) -> dict:
        """/health once no context is lent out (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["busy"] == 0 or time.monotonic() > deadline:
                return h
            time.sleep(0.05)

    def stop(self, timeout=30):
        """Ctrl-C; the exit code (killed after ``timeout`` seconds: then None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        self._reader.join(10)
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(model_path):
    s = Served(model_path, "--max-context", MAX_CONTEXT, "--original-context", L0, "--dynamic", "yarn",
               "--contexts", 2)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def llama(model_path):
    """llama-cpp-python's high-level Llama, built independently of pyntk: the reference."""
    import llama_cpp

    made = []

    def make(n_ctx, **kwargs):
        llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_threads=THREADS, n_threads_batch=THREADS,
                              verbose=False, **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


PROSE = """\
The ferry left the harbour at seven, an hour later than the timetable promised, because the
crew had waited for a van of newspapers that never came. Most passengers stood at the rail and
watched the town shrink: the grey church, the fish market with its blue shutters, the hotel
that had changed its name three times in ten years. A boy with a kite argued with his mother
about whether the wind on the island would be strong enough. An old man read a paperback about
Roman roads and underlined sentences with a pencil he kept behind his ear. Halfway across, the
engines slowed, and the captain announced over a crackling speaker that a pod of dolphins was
swimming alongside. Everyone rushed to the left side of the deck, the ferry leaned a little, and
for five minutes nobody thought about newspapers, kites or roads. When the island came into view,
its white lighthouse and green fields looked smaller than on the postcards sold in the town.
"""


def words(n: int) -> str:
    """A prompt of roughly n tokens: plain English prose (repeated past about 200 tokens)."""
    return (PROSE * (n // 200 + 1))[: n * 5]


def test_models_and_health(server, model_path):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [model_path.stem]
    h = server.health()
    assert h["status"] == "ok" and h["max_context"] == MAX_CONTEXT and h["training_context"] == L0
    assert h["method"] == "yarn" and h["max_contexts"] == 2
    # 2 contexts of 1024 cells: 30 layers x 3 KV heads x (64 + 64) x 2 bytes per cell
    assert h["kv_bytes_max"] == 2 * 1024 * 30 * 3 * 128 * 2
    # and their compute buffers, as Dynamic.memory estimates them (tests/test_dynamic.py checks it)
    with Dynamic(model_path, "yarn", MAX_CONTEXT, original_context=L0, cached=1, threads=1) as dyn:
        assert h["memory_bytes_max"] == 2 * dyn.memory_bytes(MAX_CONTEXT) > h["kv_bytes_max"]


def test_completion_is_llama_cpp_greedy_unscaled_and_yarn(server, llama):
    client = server.client()
    short, long = "The capital of France is", words(150)
    got_short = client.completions.create(model="any", prompt=short, max_tokens=12, temperature=0)
    got_long = client.completions.create(model="any", prompt=long, max_tokens=24, temperature=0)
    # reference: llama-cpp-python itself, set up by hand -- unscaled in a 128-token context, and
    # YaRN factor 256/128 for the 256-token bucket a ~165 + 24 token request falls in
    plain = llama(L0).create_completion(short, max_tokens=12, temperature=0)
    assert got_short.choices[0].text == plain["choices"][0]["text"]
    assert got_short.usage.prompt_tokens == plain["usage"]["prompt_tokens"]
    yarn = llama(256, rope_scaling_type=2, rope_freq_scale=L0 / 256, yarn_orig_ctx=L0)
    ref = yarn.create_completion(long, max_tokens=24, temperature=0)
    n = got_long.usage.prompt_tokens
    assert L0 < n + 24 <= 256 and n == ref["usage"]["prompt_tokens"]
    assert got_long.choices[0].text == ref["choices"][0]["text"]
    # and the scaling mattered: unscaled llama.cpp continues differently
    unscaled = llama(256).create_completion(long, max_tokens=24, temperature=0)
    assert unscaled["choices"][0]["text"] != ref["choices"][0]["text"]
    log = server.log()
    assert f"({n} prompt + 24 to generate) -> bucket 256, rope yarn factor=2 original_context=128" in log
    assert "-> bucket 128, rope none" in log


def test_streaming_equals_whole_and_chat_uses_the_gguf_template(server):
    client = server.client()
    once = dict(model="m", prompt="Once upon a time", max_tokens=10, temperature=0)
    whole = client.completions.create(**once)
    stream = client.completions.create(**once, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0)
    # SmolLM2's tokenizer.chat_template, rendered by hand: a default system turn, the user's turn,
    # the assistant's turn opened
    by_hand = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
               "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
               "<|im_start|>assistant\n")
    same = client.completions.create(model="m", prompt=by_hand, max_tokens=12, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == same.usage.prompt_tokens
    # the completion endpoint does not stop at <|im_end|> as text; it stops at the end token
    assert chat.choices[0].message.content == same.choices[0].text
    streamed = client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0,
                                              stream=True)
    deltas = [c.choices[0].delta for c in streamed]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == chat.choices[0].message.content


def test_stop_strings_are_cut_and_not_sent(server):
    client = server.client()
    count = dict(model="m", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    full = client.completions.create(**count).choices[0].text
    assert " 6," in full  # the model counts on
    cut = client.completions.create(**count, stop=[" 6,"])
    assert cut.choices[0].text == full[:full.index(" 6,")] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**count, stop=" 6,", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_parallel_requests_of_different_lengths_match_one_at_a_time(server):
    client = server.client()
    # three requests share the 128-token bucket, two the 256-token one, one falls in the
    # 512-token bucket; 2 contexts, so some wait for others to finish
    prompts = ["Hello, my name is", "The weather today", "Once upon a time", words(120), words(150),
               words(300)]

    def ask(prompt):
        got = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0)
        return got.choices[0].text

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    h = server.wait_idle()
    assert h["busy"] == 0 and len(h["contexts"]) <= 2
    for bucket in (128, 256, 512):
        assert f"-> bucket {bucket}, rope" in server.log()


def test_request_longer_than_max_context_gets_400_naming_the_limit(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="--max-context 1024") as e:
        client.completions.create(model="m", prompt=words(300), max_tokens=900)
    assert e.value.status_code == 400
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": words(1200)}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "--max-context 1024" in error["message"] and error["code"] == "context_length_exceeded"


def test_client_disconnecting_mid_stream_frees_its_context(server):
    # counting goes on without an end token: 120 tokens unless the request is cancelled
    body = {"prompt": "1, 2, 3, 4,", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(3):
                while not next(lines).startswith("data: "):
                    pass
            assert server.health()["busy"] == 1
        # leaving the block closes the connection with 110-odd tokens still to come
    h = server.wait_idle()
    assert h["busy"] == 0
    cancelled = re.findall(r"#(\d+) cancelled after (\d+) tokens \(client gone\)", server.log())
    assert cancelled and int(cancelled[-1][1]) < 120
    # the context is lent again at once
    assert server.client().completions.create(model="m", prompt="Hi", max_tokens=2, temperature=0).choices


BAD = [
    (b'{"prompt": "hi", ', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'["prompt", "hi"]', "valid dictionary"),
    (b'{"prompt": "hi", "frobnicate": true}', "unknown field 'frobnicate'"),
    (b'{"prompt": "hi", "max_tokens": "ten"}', "max_tokens"),
    (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
    (b'{"prompt": "hi", "temperature": 5}', "temperature"),
    (b'{"prompt": "hi", "n": 2}', "n:"),
    (b'{"prompt": ["a", "b"]}', "one prompt per request"),
    (b'{"prompt": ""}', "prompt is empty"),
    (b'{}', "prompt: Field required"),
    (b'{"prompt": "hi", "stream_options": {"include_usage": true, "x": 1}}', "unknown field"),
]
BAD_CHAT = [
    (b'{"messages": []}', "messages"),
    (b'{"messages": [{"role": "robot", "content": "hi"}]}', "messages.0.role"),
    (b'{"messages": [{"role": "user"}]}', "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": "hi", "mood": "ok"}]}', "unknown field 'messages.0.mood'"),
]


@pytest.mark.parametrize("path, body, expected", [("/v1/completions", b, e) for b, e in BAD]
                         + [("/v1/chat/completions", b, e) for b, e in BAD_CHAT])
def test_malformed_requests_get_400_naming_the_problem(server, path, body, expected):
    r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400, r.text
    assert expected in r.json()["error"]["message"]


def test_wrong_routes_and_methods_get_4xx_and_the_server_lives_on(server):
    assert httpx.get(server.url + "/v1/completions", timeout=10).status_code == 405
    assert httpx.post(server.url + "/v1/nothing", json={}, timeout=10).status_code == 404
    assert server.health()["status"] == "ok"
    assert "Traceback" not in server.log()


def test_ctrl_c_stops_a_busy_server_cleanly(model_path):
    s = Served(model_path, "--max-context", 1024, "--original-context", L0, "--dynamic", "yarn")
    try:
        body = {"prompt": "1, 2, 3, 4,", "max_tokens": 120, "temperature": 0, "stream": True}
        got = []
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", s.url + "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    got.append(line)
                    if len(got) == 4:
                        s.proc.send_signal(signal.SIGINT)
        code = s.proc.wait(30)
    finally:
        s.stop()
    assert code == 0, s.log()
    # the stream ended early with an error event saying why, not with 120 tokens
    assert any('"error"' in line and "shutting down" in line for line in got)
    assert len([line for line in got if line.startswith("data: {")]) < 120
    log = s.log()
    assert re.search(r"cancelled after \d+ tokens \(server stopping\)", log) and "stopped" in log
    assert "Traceback" not in log


def test_refuses_to_start_when_contexts_may_not_fit(model_path):
    # 4 contexts of 2^22 tokens, each a 90 GiB KV cache (23040 bytes per token) and 116 GiB of
    # compute buffers (attention scores of 9 heads x 2^22 x 512 tokens, their float16 copy, the
    # mask): more than any test machine has
    proc = subprocess.run([sys.executable, "-m", "pyntk.cli", "serve", str(model_path), "--port", "0",
                           "--max-context", str(1 << 22), "--contexts", "4", "--dynamic", "yarn"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"pyntk: error: 4 contexts of up to 4194304 tokens need 824\.0 GiB \(each: KV cache "
                        r"90\.0 GiB at 23040 bytes per token, compute buffers 116\.0 GiB without --flash-attn\), "
                        r"but only .* of memory is available; use --max-context \d+ or less, fewer --contexts, "
                        r"or --flash-attn \(compute buffers 4\.0 GiB per context\)", last), proc.stderr


def test_busy_port_is_one_line_error(server, model_path):
    port = server.url.rsplit(":", 1)[1]
    proc = subprocess.run([sys.executable, "-m", "pyntk.cli", "serve", str(model_path), "--port", port,
                           "--max-context", "1024", "--dynamic", "yarn"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"pyntk: error: cannot listen on 127.0.0.1:{port}")


def test_json_of_a_stream_is_server_sent_events(server):
    # plain httpx, no client library: the wire format itself
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                            "temperature": 0, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
