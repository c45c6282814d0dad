"""Fixtures for the in-browser test: a private JupyterLab server and headless Chromium.

The server runs on 127.0.0.1 with a random token, on a free port, with fresh (temporary)
settings, workspaces, runtime, config and IPython directories, so nothing from a user's own
JupyterLab set-up leaks in and nothing the test does leaks out. Autosave is off in those
settings and the server refuses every save: running the notebooks in the browser never
rewrites the committed files (an attempted save fails the run).

Chromium is Debian's (``/usr/bin/chromium``, or ``$LORA_LAB_CHROMIUM``), launched by
Playwright through ``executable_path``; Playwright never downloads a browser here.
Without a Chromium the test FAILS with a message saying how to install one. To opt out
explicitly (e.g. on a machine where no browser can be installed) set
``LORA_LAB_SKIP_BROWSER=1``: the tests are then reported as skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT_S = 120

# Per-plugin user settings written into the fresh settings directory.
LAB_SETTINGS = {
    # never write the notebooks back: the committed outputs are nbval's reference
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # attach every cell to the DOM, so every widget is found and the screenshot is whole
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # no news/update requests and no toast covering the screenshots
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}


def _opted_out() -> bool:
    return os.environ.get("LORA_LAB_SKIP_BROWSER", "").strip().lower() in {"1", "true", "yes"}


def find_chromium() -> str | None:
    """Path of a Chromium to drive: $LORA_LAB_CHROMIUM, else the first candidate found."""
    explicit = os.environ.get("LORA_LAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if _opted_out():
        pytest.skip("browser test opted out with LORA_LAB_SKIP_BROWSER=1: widgets NOT checked in a browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright for Python is missing: run `pip install -e '.[test]'` (or `make test`, "
                    "which installs it). Set LORA_LAB_SKIP_BROWSER=1 to skip the browser test on purpose.",
                    pytrace=False)
    path = find_chromium()
    if path is None:
        pytest.fail("No Chromium found for the browser test (looked for $LORA_LAB_CHROMIUM, "
                    f"{', '.join(CHROMIUM_CANDIDATES)}). Install Debian's: "
                    "`sudo apt-get update && sudo apt-get install -y chromium` (.ci/run does this), or point "
                    "LORA_LAB_CHROMIUM at a Chromium/Chrome binary. Set LORA_LAB_SKIP_BROWSER=1 to skip "
                    "the browser test on purpose (the widgets are then not checked in a browser).",
                    pytrace=False)
    return path


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings_dir: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


# The server's contents manager refuses every save, so the browser run cannot rewrite the
# committed notebooks even if something in JupyterLab tried; a refusal is logged and fails the run.
SERVER_CONFIG = """
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web

class ReadOnlyContents(AsyncLargeFileManager):
    async def save(self, model, path=""):
        self.log.warning("LORA_LAB_REFUSED_SAVE %s", path)
        raise web.HTTPError(403, "the lora_lab browser test never writes files")

c.ServerApp.contents_manager_class = ReadOnlyContents
"""


@pytest.fixture(scope="session")
def lab_server(chromium_path):
    """Start JupyterLab for the repository; yield ``{"url", "token"}``; stop it afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="lora_lab_browser_"))
    dirs = {name: tmp / name for name in ("settings", "workspaces", "runtime", "config", "ipython")}
    for d in dirs.values():
        d.mkdir()
    _write_settings(dirs["settings"])
    (dirs["config"] / "jupyter_server_config.py").write_text(SERVER_CONFIG)
    token = secrets.token_hex(24)
    env = {**os.environ,
           "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
           "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
           "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
           "JUPYTER_CONFIG_DIR": str(dirs["config"]),
           "IPYTHONDIR": str(dirs["ipython"]),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={_free_port()}", "--ServerApp.port_retries=20",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}",
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: open notebooks, run cells
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--ServerApp.jpserver_extensions={'jupyter_lsp': False}",
           "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
           "--ServerApp.allow_root=True"]  # CI containers run as root
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_server(proc, dirs["runtime"], token, tmp / "server.log")
        yield {"url": url, "token": token, "log": tmp / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        refused = [line for line in (tmp / "server.log").read_text().splitlines() if "LORA_LAB_REFUSED_SAVE" in line]
        shutil.rmtree(tmp, ignore_errors=True)
    assert not refused, f"JupyterLab tried to save files during the browser run: {refused}"


def _wait_for_server(proc, runtime_dir: Path, token: str, log_path: Path) -> str:
    """Wait until the server answers /api/status; return its base URL (port read from its runtime file)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}", pytrace=False)
        for info_file in runtime_dir.glob("jpserver-*.json"):
            try:
                info = json.loads(info_file.read_text())
                url = f"http://127.0.0.1:{info['port']}/"
                with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        return url
            except (OSError, ValueError, KeyError, urllib.error.URLError):
                pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not start in {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}",
                pytrace=False)


@pytest.fixture(scope="session")
def lab_page(chromium_path, lab_server):
    """One Chromium page with JupyterLab loaded (simple mode, no side panel), reused by every notebook."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in [*ARTIFACTS.glob("*.png"), ARTIFACTS / "report.json"]:  # this run's files only
        stale.unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{lab_server['url']}lab?token={lab_server['token']}&reset", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=120_000)
            page.evaluate("""async () => {
                const app = window.jupyterapp;
                await app.restored;
                if (app.shell.leftCollapsed === false) await app.commands.execute('application:toggle-left-area');
                if (app.shell.mode !== 'single-document') app.shell.mode = 'single-document';
            }""")
            page.console_errors = console_errors
            yield page
        finally:
            browser.close()
