"""What the three inspectors share: CLI arguments, opening a run with a clear error, the error page, launch.

Every inspector is ``build_app(run_dir) -> gr.Blocks``. A folder that is not a run, or a run without
the artifacts an app needs, never raises out of ``build_app``: the page shows a banner saying what was
wrong and how to fix it, and the same line goes to the terminal (the user may be looking at either).
Plots are built on ``matplotlib.figure.Figure`` objects, not pyplot, so concurrent Gradio requests
share no global figure state and nothing leaks between renders.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np
import pandas as pd

from pfkit.runs import RunDir, RunFolderError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phone-home from an offline lab machine

ERROR_ELEM_ID = "pfkit-error"
# gr.on defaults to trigger_mode="once", which drops a control change that arrives while the previous
# refresh is still running (the page then shows a stale strategy or step); "always_last" runs once more
# with the latest values after the pending event.
LATEST = "always_last"


class NoData(RunFolderError):
    """The run has the artifact but it holds nothing this view can show (e.g. a wrong column set)."""


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help=f"run folder with {what} (DESIGN.md run-folder contract)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to serve on (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 shares it)")


def say(message: str) -> None:
    """The terminal half of every error: one line on stderr."""
    print(f"pfkit inspect: error: {message}", file=sys.stderr, flush=True)


def banner(message: str) -> str:
    return f"## ⚠️ Cannot show this run\n\n{message}"


def warning(message: str) -> str:
    """A banner for data the app can show but the user should know is odd (also said in the terminal)."""
    print(f"pfkit inspect: warning: {message}", file=sys.stderr, flush=True)
    return f"**⚠️ Warning:** {message}"


def open_run(run_dir, *artifacts: str) -> RunDir:
    """``RunDir(run_dir).require(*artifacts)``; raises RunFolderError with a message fit for the page."""
    if run_dir is None or str(run_dir).strip() == "":
        raise RunFolderError("no run folder given. Pass RUN_DIR, the folder a pfkit job wrote.")
    return RunDir(run_dir).require(*artifacts)


def require_columns(frame, columns: list[str], table: str, run: RunDir) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise NoData(
            f"{run.table_path(table)} lacks column(s) {', '.join(missing)} "
            f"(has {', '.join(map(str, frame.columns))}). It was not written to the DESIGN.md contract."
        )


def load_table(run_dir, name: str, columns: list[str]) -> tuple[RunDir, pd.DataFrame]:
    """(run, table ``name``) with the ``columns`` the view needs; NoData if it has none or no rows yet."""
    run = open_run(run_dir, name)
    df = run.read(name)
    require_columns(df, columns, name, run)
    if df.empty:
        raise NoData(f"{run.table_path(name)} has no rows yet; reload once the run has logged a step.")
    return run, df


def error_app(title: str, message: str):
    """A page that only says what is wrong (and logs it to the terminal)."""
    import gradio as gr

    say(message)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}")
        gr.Markdown(banner(message), elem_id=ERROR_ELEM_ID)
    return demo


def guarded(title: str, build: Callable[[], object]):
    """Run ``build()``; on a run-folder problem (or an unreadable artifact) return the error page instead."""
    try:
        return build()
    except RunFolderError as e:
        return error_app(title, str(e))
    except (OSError, ValueError, KeyError) as e:  # corrupt parquet / npz / csv: say which and why
        return error_app(title, f"could not read the run: {type(e).__name__}: {e}")


def reload(data) -> str | None:
    """Re-read a run that is still going into ``data`` in place (the app's handlers hold that object).

    The new object is built first and swapped in whole, so a failed read (say a folder deleted under the
    app) keeps showing the earlier data; returns None on success, else the warning for the page.
    """
    try:
        fresh = type(data)(data.run.path)
    except (RunFolderError, OSError, ValueError, KeyError) as e:
        return warning(f"reload failed, still showing the earlier data: {e}")
    data.__dict__.update(fresh.__dict__)
    return None


def launch(demo, args) -> int:
    demo.launch(server_name=args.host, server_port=args.port)
    return 0


def figure(width: float = 6.0, height: float = 4.0, ncols: int = 1, nrows: int = 1, **kw):
    """A pyplot-free figure and its axes (see module docstring)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kw)
    return fig, axes


def empty_figure(message: str, width: float = 6.0, height: float = 3.0):
    fig, ax = figure(width, height)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def fmt(x, digits: int = 3) -> str:
    """Numbers as the page shows them (tests format expected values with the same rule)."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{float(x):.{digits}f}"
