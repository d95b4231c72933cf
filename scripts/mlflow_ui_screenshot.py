"""Screenshot a grid's runs table in the MLflow UI (docs/img/mlflow_runs_table.png) and check what it shows.

Starts `mlflow server` on 127.0.0.1 (a free port) on the given store, opens the link that `twm-suite sync`
prints in headless Chromium (Debian's `chromium` package) through the DevTools protocol, and fails unless
the page is the runs table listing the experiment's runs. The assistant panel's first-visit auto-open is
switched off in the fresh profile, so the table is not covered.

Usage: python scripts/mlflow_ui_screenshot.py --tracking-uri sqlite:////abs/twm-runs/mlflow.db --experiment smoke
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp  # an MLflow dependency

from twm.tracking import client_for, ui_link

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0"]


def start_server(uri: str, home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--backend-store-uri", uri], cwd=home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start")


async def shoot(page_url: str, out: Path, profile: Path, size: tuple[int, int], settle_s: float) -> str:
    chromium = subprocess.Popen([shutil.which("chromium") or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={size[0]},{size[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists():
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                counter = 0

                async def call(method: str, **params) -> dict:
                    nonlocal counter
                    counter += 1
                    await ws.send_json({"id": counter, "method": method, "params": params})
                    while True:
                        message = json.loads((await ws.receive()).data)
                        if message.get("id") == counter:
                            return message.get("result", {})

                origin = page_url.split("/#")[0]
                await call("Page.navigate", url=origin + "/health")  # the UI's origin, to set its local storage
                await asyncio.sleep(1)
                await call("Runtime.evaluate", expression=(
                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')"))
                await call("Page.navigate", url=page_url)
                await asyncio.sleep(settle_s)
                text = (await call("Runtime.evaluate", expression="document.body.innerText"))["result"]["value"]
                shot = await call("Page.captureScreenshot", format="png")
                out.write_bytes(base64.b64decode(shot["data"]))
                return text
    finally:
        chromium.kill()
        chromium.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "mlflow_runs_table.png")
    parser.add_argument("--size", default="1600x800")
    parser.add_argument("--settle-s", type=float, default=12.0, help="wait this long for the page to render")
    args = parser.parse_args()

    experiment = client_for(args.tracking_uri).get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment} at {args.tracking_uri}")
    runs = client_for(args.tracking_uri).search_runs([experiment.experiment_id])
    home = Path(tempfile.mkdtemp(prefix="mlflow-ui-"))
    server, url = start_server(args.tracking_uri, home)
    try:
        link = ui_link(url, experiment.experiment_id)
        width, height = (int(x) for x in args.size.split("x"))
        text = asyncio.run(shoot(link, args.out, home / "profile", (width, height), args.settle_s))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        shutil.rmtree(home, ignore_errors=True)
    names = [run.info.run_name for run in runs]
    missing = [name for name in names if name[:20] not in text]
    if "Runs" not in text.split() or f"{len(runs)} matching runs" not in text or missing:
        raise SystemExit(f"{link} does not show the runs table with every run (missing {missing}); page text:\n"
                         + text[:800])
    print(f"{link}: the runs table with all {len(runs)} runs; screenshot {args.out}")


if __name__ == "__main__":
    main()
