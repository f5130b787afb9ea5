"""Browser-test helpers: serve a Gradio app on 127.0.0.1 in a background thread, drive Debian's Chromium.

Playwright's own browser download needs the network, so the tests use the distribution's Chromium
(``apt-get install chromium``; CI's .ci/run installs it) and skip, saying so, when it is absent.
"""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # generous: the shared CI/dev machines can be heavily loaded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(demo):
    """Launch ``demo`` without blocking; yield its URL; close the server afterwards."""
    from unittest import mock

    import gradio.networking as net

    check = net.url_ok

    def patient(url: str) -> bool:
        """Gradio gives its own server ~5 s to answer before refusing to launch; on a shared machine at
        nice 19 that is too short (launch raised "localhost is not accessible"). Wait up to 2 minutes."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if check(url):
                return True
        return False

    port = free_port()
    with mock.patch.object(net, "url_ok", patient):
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (session-wide: starting it is the slow part)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) to run browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        yield pg
    finally:
        context.close()


def open_app(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.locator("gradio-app, .gradio-container").first.wait_for()


def wait_text(page, selector: str, text: str, timeout: int = TIMEOUT_MS) -> str:
    """Wait until the element's visible text contains ``text``; return that text (or fail showing it)."""
    loc = page.locator(selector)
    try:
        page.wait_for_function(
            "([sel, t]) => { const e = document.querySelector(sel); return e && e.innerText.includes(t); }",
            arg=[selector, text], timeout=timeout,
        )
    except Exception as e:  # show what the page had instead
        have = loc.inner_text() if loc.count() else "<element missing>"
        raise AssertionError(f"{selector!r} never showed {text!r}; it shows:\n{have}") from e
    return loc.inner_text()


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the Gradio dropdown labelled ``label``."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def open_section(page, elem_id: str) -> None:
    """Open the (closed) accordion ``elem_id``: the apps keep secondary panels closed so the page draws sooner."""
    page.locator(f"#{elem_id} .label-wrap").first.click()


def settle(page, timeout: int = TIMEOUT_MS) -> None:
    """Wait until Gradio has no event in flight (its status trackers show "processing" or a queue place)."""
    page.wait_for_function(
        "() => !/processing \\||queue: \\d/.test(document.body.innerText)", timeout=timeout, polling=200)


def screenshot(page, path) -> None:
    settle(page)
    page.screenshot(path=path, full_page=True)


def shot(page, path) -> None:
    """``screenshot`` to ``path`` and, when $PFKIT_SHOTS names a folder, a copy there under the same name
    (screenshots for a report, outside the repository)."""
    import os
    import shutil

    screenshot(page, path)
    if os.environ.get("PFKIT_SHOTS"):
        os.makedirs(os.environ["PFKIT_SHOTS"], exist_ok=True)
        shutil.copy(path, os.path.join(os.environ["PFKIT_SHOTS"], Path(path).name))


def token_values(page, want, timeout: int = TIMEOUT_MS) -> list[float]:
    """The per-token view's shading values (``data-value`` of each token span), once they equal ``want``
    or ``timeout`` ms passed (the token HTML and its info line are two components of one update)."""
    import numpy as np

    deadline = time.monotonic() + timeout / 1000
    while True:
        vals = page.eval_on_selector_all("#tokens .pfkit-tok", "els => els.map(e => +e.dataset.value)")
        if (len(vals) == len(want) and np.allclose(vals, want, rtol=1e-5, atol=1e-6)) or time.monotonic() > deadline:
            return vals
        page.wait_for_timeout(200)


@contextmanager
def inspect_server(app: str, run_dir, deadline_s: float = 180):
    """`pfkit inspect APP RUN_DIR` in a fresh process; yield (its URL, seconds until it answered)."""
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "pfkit.cli", "inspect", app, str(run_dir), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
            assert time.perf_counter() - t0 < deadline_s, f"`pfkit inspect {app}` did not answer in {deadline_s} s"
        yield url, time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)


def view_page(page, url: str, usable) -> tuple[float, float]:
    """Open ``url`` and wait for a usable page, then for every panel drawn; (seconds to each).
    ``usable`` = (selector/text pairs of a usable page, panel selectors, closed section to open or None)."""
    texts, panels, last = usable
    t1 = time.perf_counter()
    open_app(page, url)
    try:  # one check of all the texts (waiting for each in turn adds a driver round trip per text)
        page.wait_for_function(
            "(pairs) => pairs.every(([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); })",
            arg=[list(p) for p in texts], timeout=TIMEOUT_MS)
    except Exception:
        for sel, text in texts:  # name the one that never showed
            wait_text(page, sel, text, timeout=1000)
        raise
    usable_s = time.perf_counter() - t1
    for sel in panels:
        page.locator(f"{sel} img").first.wait_for()  # the figure itself (an empty plot shows an svg icon)
    if last:
        open_section(page, last[0])  # a closed accordion: computed on load, drawn when opened
        wait_text(page, *last[1:])
    return usable_s, time.perf_counter() - t1
