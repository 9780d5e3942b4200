"""Open a page in headless Chromium and look at it through the DevTools protocol (CDP over a
WebSocket; no browser-driver package): console errors, a JavaScript probe, a screenshot."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--mute-audio",
                  "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def inspect_page(url: str, probe: str, wait_s: float = 3.0, size=(1200, 900)) -> dict:
    """Load url, wait, evaluate the JavaScript expression `probe` (twice, wait_s apart, so a caller
    can see time advance), take a screenshot. Returns {"errors", "probe": [first, second], "png"}."""
    profile = tempfile.mkdtemp(prefix="vla0-chromium-")
    proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--window-size={size[0]},{size[1]}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = _devtools_url(proc)
        return asyncio.run(_inspect(ws_url, url, probe, wait_s))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_url(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m.group(1)
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("chromium did not start its DevTools endpoint")


async def _inspect(browser_ws: str, url: str, probe: str, wait_s: float) -> dict:
    import websockets

    async with websockets.connect(browser_ws, max_size=2**28) as ws:
        ids = iter(range(1, 10**6))
        events: list[dict] = []

        async def call(method: str, session: str | None = None, **params):
            i = next(ids)
            msg = {"id": i, "method": method, "params": params, **({"sessionId": session} if session else {})}
            await ws.send(json.dumps(msg))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == i:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
                events.append(reply)

        target = (await call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await call(f"{domain}.enable", session)
        await call("Page.navigate", session, url=url)
        first = await _evaluate(call, session, probe, after=wait_s / 2)
        second = await _evaluate(call, session, probe, after=wait_s)
        png = base64.b64decode((await call("Page.captureScreenshot", session, format="png"))["data"])
    errors = [e["params"] for e in events if
              (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
              or e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    return {"errors": errors, "probe": [first, second], "png": png}


async def _evaluate(call, session: str, expression: str, after: float):
    await asyncio.sleep(after)
    result = await call("Runtime.evaluate", session, expression=expression, returnByValue=True)
    return result["result"].get("value")
