"""The web console in a real headless Chromium (Debian's, through chromedriver):

- it loads, refuses a wrong key and logs in with the right one;
- a SIPp call with a spoken question is listed live, then (ended) opens on its
  transcript, with the agent's answer, and its turn timeline;
- the test phone: Chromium's fake microphone asks a question over WebRTC (aiortc on the
  node), the agent answers, the page shows it, and the call's record says so.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from loadtest.browser import Console, chromium, question_microphone, wait_for
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.runner import caller_audio
from loadtest.sipp import SippResult, run_sipp
from tests.e2e.api_client import ADMIN, api
from tests.e2e.test_voice_agent import answer

pytestmark = pytest.mark.e2e

QUESTION = "what are your opening hours"


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    options = NodeOptions(media_timeout_s=0, max_call_duration_s=120,
                          env={"VOXSWITCH_API_KEY": ADMIN})  # fmt: skip
    return voxswitch_nodes.start("console", options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = chromium(microphone=question_microphone(tmp_path / "question.wav", QUESTION))
    try:
        yield driver
    finally:
        driver.quit()


def base_url(node: NodeProcess) -> str:
    return node.health_url.removesuffix("/health")


def test_the_console_logs_in_and_shows_a_call_live_then_its_transcript(
    node: NodeProcess, browser: WebDriver, tmp_path: Path
) -> None:
    console = Console(browser, base_url(node))
    console.open()
    # A wrong key is refused, in the page.
    browser.find_element(By.ID, "api-key").send_keys("not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for("the refusal", lambda: "not accepted" in console.text("#login-error"))
    browser.find_element(By.ID, "api-key").clear()
    console.log_in(ADMIN)
    wait_for("the node's name", lambda: node.node_id in console.text("#node"))

    runs: list[SippResult] = []
    thread = threading.Thread(target=lambda: runs.append(run_sipp(
        node.sip_address, "media_call.xml", workdir=tmp_path / "sipp", calls=1,
        pause_ms=14000, timeout_s=60, files={"caller.ulaw": caller_audio(seconds_before=2.0)},
    )))  # fmt: skip
    thread.start()
    row = wait_for("the call in the live list", lambda: console.rows("calls-table"), 10)[0]
    call_id = row.get_attribute("data-call-id")
    assert "inbound" in row.text and "confirmed" in row.text, row.text
    expected = answer("hours")
    # The live list shows the last thing said: the agent's answer, once given.
    wait_for("the answer in the live list", lambda: expected[:30] in console.text(
        f'#calls-table tr[data-call-id="{call_id}"]'), 15)
    thread.join(60)
    assert runs and runs[0].successful_calls == 1, runs
    ended = wait_for("the call among the ended", lambda: console.rows("ended-table"), 10)
    assert ended[0].get_attribute("data-call-id") == call_id
    ended[0].find_element(By.TAG_NAME, "a").click()
    wait_for("the call page", lambda: console.visible("page-call"))
    wait_for("its state", lambda: console.text("#call-state") == "ended")
    said = browser.find_elements(By.CSS_SELECTOR, "#call-transcript li.assistant")
    assert any(expected in li.text for li in said), [li.text for li in said]
    heard = browser.find_elements(By.CSS_SELECTOR, "#call-transcript li.user")
    assert any("hours" in li.text for li in heard), [li.text for li in heard]
    bars = browser.find_elements(By.CSS_SELECTOR, "#call-timeline svg rect")
    assert len(bars) > 6, "a turn's bar segments and the legend"  # six legend swatches
    assert "completed" in console.text("#call-facts")


def test_the_test_phone_talks_to_the_agent_over_webrtc(
    node: NodeProcess, browser: WebDriver
) -> None:
    console = Console(browser, base_url(node))
    console.open()
    console.log_in(ADMIN)
    console.go("#/phone", "page-phone")
    wait_for("the agents", lambda: browser.find_elements(By.CSS_SELECTOR, "#phone-agent option"))
    browser.find_element(By.ID, "phone-call").click()
    call_id = wait_for("the call id", lambda: console.text("#phone-call-id"), 15)
    wait_for("connected", lambda: console.text("#phone-status") == "connected", 15)
    expected = answer("hours")
    wait_for("the answer in the page", lambda: any(
        expected in li.text for li in browser.find_elements(
            By.CSS_SELECTOR, "#phone-transcript li.assistant")), 25)  # fmt: skip
    browser.find_element(By.ID, "phone-hangup").click()
    wait_for("the end", lambda: console.text("#phone-status").startswith("ended"), 10)

    def ended_view() -> Any:
        status, view = api(node, "GET", f"/v1/calls/{call_id}")
        return view if status == 200 and view["state"] == "ended" else None

    view = wait_for("the call's end", ended_view, 10)
    assert view["disposition"] == "completed" and view["trunk"] == "webrtc", view
    turns = [t for t in view["turns"] if t["source"] == "speech"]
    assert turns and turns[0]["agent"] == expected, view["turns"]
    assert turns[0]["knowledge"] == ["hours"] and 0 < turns[0]["latency_s"] < 3.0, turns[0]
    assert "hours" in turns[0]["caller"]


def test_the_live_calls_stream_needs_a_key_and_sends_events(node: NodeProcess) -> None:
    url = f"{base_url(node)}/v1/stream/calls?interval_s=0.2"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = []
        while len(events) < 3:  # three events, 0.2 s apart
            block = b""
            while not block.endswith(b"\n\n"):
                block += response.readline()
            events.append(block.decode())
    for block in events:
        kind, data = block.strip().split("\n")
        assert kind == "event: calls" and data.startswith("data: ")
        body = json.loads(data.removeprefix("data: "))
        assert body["calls"] == [] and body["node"]["node_id"] == node.node_id


def test_the_phone_endpoint_answers_bad_offers_with_a_clear_4xx(node: NodeProcess) -> None:
    offer = {"sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", "type": "offer"}
    assert api(node, "POST", "/v1/webrtc/calls", key=None, body=offer)[0] == 401
    status, body = api(node, "POST", "/v1/webrtc/calls", body={**offer, "agent": "nobody"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "agent"]
    status, body = api(node, "POST", "/v1/webrtc/calls", body={**offer, "type": "answer"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "type"]
    status, body = api(node, "POST", "/v1/webrtc/calls", body=offer)  # no audio, no ICE
    assert status == 400 and "offer not answered" in body["detail"], body
    assert api(node, "POST", "/v1/webrtc/calls/web-nothing/hangup")[0] == 404
    assert api(node, "GET", "/v1/agents")[1] == {"agents": ["default"]}
