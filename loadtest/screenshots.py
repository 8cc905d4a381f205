"""The console's pictures in ``docs/``: a node, a few calls, headless Chromium.

    python -m loadtest.screenshots [--out docs]

Starts a node (the demo agent), gives it a trunk and routes, places SIPp calls that
ask a question (RTP audio), and takes: the live calls, a call's transcript and turn
timeline, the test phone in a call (Chromium's fake microphone asks), trunks and
routes, and health.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By

from loadtest.browser import Console, chromium, question_microphone, wait_for
from loadtest.node import NodeOptions, NodeProcess
from loadtest.runner import QUESTION, caller_audio
from loadtest.sipp import run_sipp

KEY = "screenshots-admin-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def api(node: NodeProcess, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        node.health_url.replace("/health", path), method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        work = Path(tmp)
        node = NodeProcess(work / "node", NodeOptions(
            media_timeout_s=0, env={"VOXSWITCH_API_KEY": KEY,
                                    "VOXSWITCH_TRUNKS_FILE": str(work / "trunks.json")},
        ), name="demo-node")  # fmt: skip
        node.start()
        driver = chromium(microphone=question_microphone(work / "question.wav", QUESTION))
        try:
            api(node, "PUT", "/v1/trunks/carrier-a", {"host": "127.0.0.1", "port": 5999,
                                                       "options_interval_s": 30})  # fmt: skip
            api(node, "PUT", "/v1/routes/outbound/all", {"prefix": "+1", "trunks": ["carrier-a"]})
            api(node, "PUT", "/v1/routes/inbound/pizza", {"pattern": ".*", "agent": "default"})
            audio = {"caller.ulaw": caller_audio(seconds_before=2.0)}
            calls = threading.Thread(target=lambda: run_sipp(
                node.sip_address, "media_call.xml", workdir=work / "sipp", calls=4, rate=1,
                pause_ms=16000, timeout_s=90, files=audio,
            ))  # fmt: skip
            calls.start()
            console = Console(driver, node.health_url.removesuffix("/health"))
            console.open()
            console.log_in(KEY)
            wait_for("four calls", lambda: len(console.rows("calls-table")) == 4, 20)
            time.sleep(7)  # the agent has answered their first questions
            console.screenshot(out / "console-calls.png")
            calls.join(120)
            first = wait_for("an ended call", lambda: console.rows("ended-table"), 20)[-1]
            first.find_element(By.TAG_NAME, "a").click()
            wait_for("its transcript", lambda: console.text("#call-state") == "ended")
            console.screenshot(out / "console-call.png")
            console.go("#/phone", "page-phone")
            wait_for("the agents", lambda: driver.find_elements(By.CSS_SELECTOR, "option"))
            driver.find_element(By.ID, "phone-call").click()
            wait_for("an answer", lambda: driver.find_elements(
                By.CSS_SELECTOR, "#phone-transcript li.user"), 30)  # fmt: skip
            time.sleep(3)
            console.screenshot(out / "console-phone.png")
            driver.find_element(By.ID, "phone-hangup").click()
            console.go("#/trunks", "page-trunks")
            wait_for("the trunk", lambda: "carrier-a" in console.text("#trunks-table"))
            console.screenshot(out / "console-trunks.png")
            console.go("#/health", "page-health")
            wait_for("the facts", lambda: "demo-node" in console.text("#health-facts"))
            console.screenshot(out / "console-health.png")
        finally:
            driver.quit()
            node.stop()
    print("\n".join(str(p) for p in sorted(out.glob("console-*.png"))))


if __name__ == "__main__":
    main()
