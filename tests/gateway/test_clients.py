"""Real clients against a gateway on a scripted backend: `llmstream chat`, wscat, Chromium."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from asyncio.subprocess import PIPE, STDOUT

import pytest
from gateway_support import wait_for, wscat_binary
from testsupport import require_tool


async def run_cli(*args: str, stdin: bytes | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstream", *args, stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_chat_prompt_prints_the_streamed_answer_and_its_timing(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    output = await run_cli("chat", gw.ws_url, "--prompt", "hi there")
    assert "Hello there, friend!" in output
    assert "ttft" in output
    assert backend.bodies[0]["messages"] == [{"role": "user", "content": "hi there"}]


async def test_chat_passive_runs_the_builtin_questions_concurrently(fake_backend, gateway):
    backend = await fake_backend(delay_s=0.05)
    gw = await gateway(backends=(backend.url,))
    output = await run_cli("chat", gw.ws_url, "--passive")
    lines = [line for line in output.splitlines() if "tokens/s" in line]
    assert len(lines) == 4
    assert backend.requests == 4


async def test_chat_context_command_switches_to_question_and_context(fake_backend, gateway):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    script = b"/context The sky here is green.\nWhat colour is the sky?\n/context\nplain\n"
    await run_cli("chat", gw.ws_url, stdin=script)
    assert backend.bodies[0]["question"] == "What colour is the sky?"
    assert backend.bodies[0]["context"] == "The sky here is green."
    assert backend.bodies[1]["messages"] == [{"role": "user", "content": "plain"}]


async def test_chat_ctrl_c_cancels_the_answer_but_not_the_session(fake_backend, gateway):
    backend = await fake_backend(delay_s=0.2, tokens=["word "] * 100)
    gw = await gateway(backends=(backend.url,))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstream", "chat", gw.ws_url, stdin=PIPE, stdout=PIPE,
        stderr=STDOUT,
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write(b"talk for a long time\n")
    await process.stdin.drain()
    await wait_for(lambda: backend.active == 1, within_s=10)
    process.send_signal(signal.SIGINT)
    await wait_for(lambda: backend.cancelled == 1, within_s=10)
    backend.tokens = ["short"]
    backend.delay_s = 0.0
    process.stdin.write(b"and now briefly\n")
    process.stdin.close()
    output, _ = await asyncio.wait_for(process.communicate(), 20)
    text = output.decode()
    assert process.returncode == 0, text
    assert "[cancelled]" in text
    assert "short" in text
    assert backend.requests == 2


async def test_wscat_plain_mode(fake_backend, gateway):
    wscat = wscat_binary()
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,))
    # wscat exits at end of stdin, so stdin stays open (sleep) while the answer streams.
    command = f"{wscat} -c {gw.ws_url} -x 'hello gateway' -w 3 < <(sleep 5)"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 20)
    # wscat prints one line per frame: the tokens, then the `[done]` marker.
    lines = output.decode().splitlines()
    assert "".join(lines[:-1]) == "Hello there, friend!"
    assert lines[-1] == "[done]"
    assert backend.bodies[0]["messages"] == [{"role": "user", "content": "hello gateway"}]


def chromium_driver():  # type: ignore[no-untyped-def]
    require_tool("chromium", "apt-get install chromium")
    driver_path = require_tool("chromedriver", "apt-get install chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", "--no-default-browser-check", "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,MediaRouter",
        # Even with the flags above Chromium looked up Google's and DuckDuckGo's hosts (seen
        # in a capture during `make test`): no name resolves, so nothing leaves the machine;
        # the page under test is on 127.0.0.1.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='llmstream-chromium-')}")
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.mark.timeout(120)
async def test_chat_page_streams_an_answer_in_headless_chromium(fake_backend, gateway):
    backend = await fake_backend(delay_s=0.05)
    gw = await gateway(backends=(backend.url,))
    driver = await asyncio.to_thread(chromium_driver)
    try:
        from selenium.webdriver.common.by import By

        def use_page() -> tuple[str, str]:
            import time

            driver.get(gw.url + "/")
            deadline = time.monotonic() + 30
            while "connected" not in driver.find_element(By.ID, "status").text:
                assert time.monotonic() < deadline, "page never connected"
                time.sleep(0.1)
            driver.find_element(By.ID, "prompt").send_keys("Say hello")
            driver.find_element(By.ID, "send").click()
            while "length" not in driver.find_element(By.CSS_SELECTOR, ".stats").text:
                assert time.monotonic() < deadline, "answer never finished"
                time.sleep(0.1)
            return (
                driver.find_element(By.CSS_SELECTOR, ".answer").text,
                driver.find_element(By.CSS_SELECTOR, ".stats").text,
            )

        answer, stats = await asyncio.to_thread(use_page)
    finally:
        await asyncio.to_thread(driver.quit)
    assert answer == "Hello there, friend!"
    assert "TTFT" in stats
    assert "tokens/s" in stats
    assert backend.bodies[0]["messages"] == [{"role": "user", "content": "Say hello"}]


async def test_the_page_is_served_at_the_root_without_a_key(fake_backend, gateway, http):
    backend = await fake_backend()
    gw = await gateway(backends=(backend.url,), api_key="k")
    response = await http.get(gw.url + "/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "new WebSocket" in await response.text()
