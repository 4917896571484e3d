import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from smollm import ModelConfig, SmolLM
from smollm.serve import create_app


@pytest.fixture(scope="module")
def served(tokenizer):
    torch.manual_seed(0)
    model = SmolLM(
        ModelConfig(
            dim=32, n_layers=2, n_heads=2, n_kv_heads=1, intermediate_size=64, max_seq_len=1024
        )
    ).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def client(served):
    model, tok = served
    return TestClient(create_app(model, tok, "tiny-test-model"))


def sse_text(body: str) -> str:
    frames = [f for f in body.split("\n\n") if f.startswith("data: ")]
    return "".join(json.loads(f[6:])["text"] for f in frames)


def test_openapi_schema_and_info(client):
    schema = client.get("/openapi.json").json()
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert set(props) == {
        "prompt",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "stream",
    }
    assert props["max_new_tokens"]["maximum"] == 512
    info = client.get("/info").json()
    assert info["model"] == "tiny-test-model" and info["parameters"] > 1_000_000


def test_whole_text_and_stream_agree(client):
    body = {"prompt": "Once upon a time", "max_new_tokens": 12, "temperature": 0.0}
    whole = client.post("/generate", json=body)
    assert whole.status_code == 200 and whole.json()["text"]
    streamed = client.post("/generate", json={**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "event: done" in streamed.text
    assert sse_text(streamed.text) == whole.json()["text"]


def test_seeded_sampling_is_reproducible(client):
    body = {"prompt": "The river", "max_new_tokens": 10, "temperature": 1.0, "seed": 7}
    assert client.post("/generate", json=body).json() == client.post("/generate", json=body).json()


@pytest.mark.parametrize(
    "patch,status,field",
    [
        ({"temperature": 5}, 422, "temperature"),
        ({"max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"max_new_tokens": 10_000}, 422, "max_new_tokens"),
        ({"top_p": 0}, 422, "top_p"),
        ({"prompt": ""}, 422, "prompt"),
        ({"colour": "red"}, 422, "extra_forbidden"),  # an unknown key is not echoed
    ],
)
def test_bad_parameters_are_json_4xx(client, patch, status, field):
    res = client.post("/generate", json={"prompt": "hi", **patch})
    assert res.status_code == status
    assert field in json.dumps(res.json()["detail"])


def test_oversized_body_is_rejected(client):
    res = client.post(
        "/generate",
        content=b'{"prompt": "' + b"a" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert res.status_code == 413 and "detail" in res.json()


def test_concurrent_requests_do_not_share_a_cache(client):
    prompts = ["Once upon a time", "The United States", "In the beginning", "A small model"]

    def one(p):
        return client.post(
            "/generate", json={"prompt": p, "max_new_tokens": 16, "temperature": 0.0}
        ).json()["text"]

    alone = [one(p) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, prompts * 2))
    assert together == alone * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_disconnect_stops_generation(served):
    import uvicorn

    model, tok = served
    calls = {"n": 0}
    forward = model.forward

    def counting(*a, **k):
        calls["n"] += 1
        time.sleep(0.01)  # slow enough that 512 tokens take seconds
        return forward(*a, **k)

    model.forward = counting
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, tok, "tiny"), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        body = {
            "prompt": "Once upon a time",
            "max_new_tokens": 512,
            "temperature": 0.0,
            "stream": True,
        }
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/generate", json=body, timeout=30
        ) as res:
            for i, _ in enumerate(res.iter_lines()):
                if i > 6:
                    break  # the client goes away mid-generation
        time.sleep(1.0)
        after_close = calls["n"]
        time.sleep(1.0)
        assert calls["n"] == after_close  # nothing is generated any more
        assert calls["n"] < 200
    finally:
        model.forward = forward
        server.should_exit = True
        thread.join(10)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_browser_types_prompt_clicks_generate_and_sees_streamed_text(tmp_path):
    """End to end: `smol serve` on the packaged weights, driven by headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        "Debian chromium is not installed: run `make test` (scripts/setup-test-deps.sh)"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "smollm.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/info", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        flags = [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            assert "SmolLM2-135M" in page.inner_text("#model") and "134,515,008" in page.inner_text(
                "#model"
            )
            page.fill("#prompt", "The capital of France is")
            page.fill("#max_new_tokens", "24")
            page.fill("#temperature", "0")
            page.click("#generate")
            page.wait_for_function(
                "document.querySelector('#generated') && document.querySelector('#generated').textContent.length > 0",
                timeout=60_000,
            )
            page.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('done')", timeout=60_000
            )
            text = page.inner_text("#generated")
            shot = Path(os.environ.get("SMOLLM_ARTIFACTS", tmp_path)) / "serve.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert len(text.split()) >= 5
        assert shot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(10)
