"""Time the three inspectors on issue #20's 10k-row runs: in-process build + full render (CPU and wall), the
filtration app's run-wide views, and, with Chromium, a fresh `pfkit inspect` server's start and the seconds
to a usable page (right after start and for a later visitor). The issue's target: a usable page in 3 s.

    python benchmarks/inspectors.py [--apps filtration difficulty noisemask] [--no-browser]

The run folders are the tests' synthetic ones (tests/_inspect_runs.py), written as the modules write them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _inspect_runs import (  # noqa: E402
    APPS_10K,
    RENDER_10K,
    USABLE_10K,
    difficulty_run,
    filtration_run,
    filtration_run_wide_views,
    join_warm_imports,
    noisemask_run,
    run_10k,
)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


def in_process(app: str, run: Path, tmp: Path) -> str:
    """Build + full render of a 10k-row run, after the imports (gradio, torch, seaborn) are warm."""
    small = {"filtration": lambda p: filtration_run(p, steps=1), "difficulty": difficulty_run,
             "noisemask": noisemask_run}[app]
    small(tmp / f"{app}-warm")
    RENDER_10K[app](tmp / f"{app}-warm", tmp)  # the same render on a tiny run first: its imports are not timed
    join_warm_imports()
    t0, c0 = time.perf_counter(), time.process_time()
    rows = RENDER_10K[app](run, tmp)
    return f"{app:10s} {rows:6d} rows: build + full render {time.perf_counter() - t0:5.2f} s wall, " \
           f"{time.process_time() - c0:5.2f} s CPU"


def run_wide(run: Path) -> str:
    laps, last = [], [time.process_time()]

    def lap(stage: str) -> None:
        now = time.process_time()
        laps.append(f"{stage} {now - last[0]:.2f}")
        last[0] = now

    filtration_run_wide_views(run, lap)
    return "filtration run-wide views (CPU s): " + ", ".join(laps)


def bare_gradio_page(context) -> float:
    """The floor: seconds to a usable page for a Gradio app with one line of text, served in this process."""
    import gradio as gr
    from _browser import serve, view_page

    with gr.Blocks() as demo:
        gr.Markdown("ready", elem_id="bare")
    with contextlib.redirect_stdout(io.StringIO()), serve(demo) as url:  # (gradio prints "Closing server …")
        view_page(context.new_page(), url, ([("#bare", "ready")], [], None))  # the first visit compiles the JS
        return view_page(context.new_page(), url, ([("#bare", "ready")], [], None))[0]


def browser(apps, runs: dict[str, Path]) -> list[str]:
    from _browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, inspect_server, view_page

    if not CHROMIUM.exists():
        return [f"browser: skipped ({CHROMIUM} not found: apt-get install -y chromium)"]
    from playwright.sync_api import sync_playwright

    lines = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        lines.append(f"baseline: a bare Gradio page (one Markdown) usable in {bare_gradio_page(context):.2f} s "
                     f"(a later visit, {load()})")
        context.close()
        for app in apps:
            context = chromium.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            at_start = load()
            with inspect_server(app, runs[app]) as (url, start):
                first = view_page(context.new_page(), url, USABLE_10K[app])
                later = view_page(context.new_page(), url, USABLE_10K[app])
            context.close()
            lines.append(f"{app:10s} server start {start:5.2f} s (fresh process, imports included); page usable "
                         f"{first[0]:5.2f} s right after start, {later[0]:5.2f} s later; every panel drawn "
                         f"{first[1]:5.2f} / {later[1]:5.2f} s ({at_start})")
        chromium.close()
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apps", nargs="+", choices=APPS_10K, default=list(APPS_10K))
    p.add_argument("--no-browser", action="store_true", help="only the in-process timings")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = {app: tmp / app for app in args.apps}
        for app, run in runs.items():
            run_10k(app, run)
        print(f"inspectors on 10k-row runs ({load()})")
        for app in args.apps:
            print(in_process(app, runs[app], tmp))
        if "filtration" in runs:
            print(run_wide(runs["filtration"]))
        if not args.no_browser:
            for line in browser(args.apps, runs):
                print(line)
        print(f"done ({load()}); the issue's target is a usable page within 3 s")


if __name__ == "__main__":
    main()
