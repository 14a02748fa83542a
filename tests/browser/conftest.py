"""Browser tests: Playwright driving the system's Chromium against a real `rnnlm serve` process.

Skipped (with the reason) where no Chromium or Playwright can be found; under CI (CI=true) they fail
instead. Screenshots go to $RNNLM_BROWSER_ARTIFACTS, or a pytest temporary folder.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("lstm", "gru", "student")
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, and nothing that would reach out to the internet on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """$RNNLM_CHROMIUM, else the first Chromium on PATH (Debian's package installs /usr/bin/chromium)."""
    explicit = os.environ.get("RNNLM_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((found for name in CHROMIUM_CANDIDATES if (found := shutil.which(name))), None)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    pytest.skip(reason)


# Module scope: Playwright's sync API runs an event loop of its own, which must be gone before any
# later (anyio) test module starts one.
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = find_chromium()
    if executable is None:
        _unavailable("no Chromium found (apt-get install chromium, or set RNNLM_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("RNNLM_BROWSER_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_server(tmp: Path, proc_tools, *, worker: bool, data_root: Path | None = None,
                 models: tuple[str, ...] = SHIPPED, **settings: str):
    """`rnnlm serve` on a free port of 127.0.0.1, serving the shipped models (linked into a folder of its
    own, so that models trained by jobs never land in the repository)."""
    checkpoints = tmp / "checkpoints"
    checkpoints.mkdir()
    for name in models:
        (checkpoints / name).symlink_to(REPO / "checkpoints" / name, target_is_directory=True)
    settings = {"reload_interval_s": "0.5", "worker_poll_interval_s": "0.2", **settings}
    if data_root is not None:
        settings["data_roots"] = str(data_root)
    settings = {f"RNNLM_{k.upper()}": v for k, v in settings.items()}
    return proc_tools.start_serve(checkpoints, tmp / "jobs.db", tmp / "serve.log",
                                  *(["--with-worker"] if worker else []),
                                  env=proc_tools.clean_env(OMP_NUM_THREADS="1", **settings), timeout_s=120)


@pytest.fixture
def launch(tmp_path, proc_tools) -> Iterator[Callable]:
    """`launch(worker=False, models=("lstm", ...), **settings)` -> a Server of this test's own, which the
    test may stop; stopped at the end of the test otherwise."""
    started = []

    def launch_(**kwargs):
        folder = tmp_path / f"server-{len(started)}"
        folder.mkdir()
        started.append(start_server(folder, proc_tools, **{"worker": False, **kwargs}))
        return started[-1]

    yield launch_
    for srv in started:
        proc_tools.stop(srv.proc)


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory, data_root, proc_tools) -> Iterator:
    """One server (with a training worker) for the browser tests that leave it running."""
    # a long generation (max_tokens up to 5000) leaves the test time to press Stop on any machine
    srv = start_server(tmp_path_factory.mktemp("page-server"), proc_tools, worker=True, data_root=data_root,
                       max_tokens="5000")
    try:
        yield srv
    finally:
        proc_tools.stop(srv.proc, timeout_s=60)


@dataclass
class PageRun:
    """A page plus what it did: every URL it requested, those the server's Content-Security-Policy stopped
    in the browser before they were sent, and every uncaught script error."""
    page: object
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def off_host(self, base: str) -> list[str]:
        """Requests that went out to anywhere but the server's host."""
        host = urlsplit(base).netloc
        return [u for u in self.requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                and urlsplit(u).netloc != host and u not in self.blocked]


@pytest.fixture
def open_page(browser, artifacts, request) -> Iterator[Callable[..., PageRun]]:
    """`open_page(url, width=1200, height=900)` -> PageRun. At the end of the test: no script error happened
    and no request left the server's host."""
    contexts, runs = [], []

    def open_(url: str, width: int = 1200, height: int = 900) -> PageRun:
        context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        run = PageRun(page)
        page.on("request", lambda r: run.requests.append(r.url))
        page.on("pageerror", lambda e: run.errors.append(str(e)))
        page.on("requestfailed", lambda r: r.failure == "csp" and run.blocked.append(r.url))
        page.goto(url)
        runs.append((run, url))
        return run

    yield open_
    for context in contexts:
        context.close()
    for run, url in runs:
        assert run.errors == [], f"script errors on {url}: {run.errors}"
        assert run.off_host(url) == [], f"requests that left {url}: {run.off_host(url)}"
