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


# ------------------------------------------------------------------ search / URL / CSV / tokens (any app)
ANY = "any"


class BadQuery(ValueError):
    """A search the user typed that cannot run (an invalid regular expression, min above max)."""


def text_mask(frame: pd.DataFrame, columns, text: str, regex: bool = False, case: bool = False) -> np.ndarray:
    """Rows whose ``columns`` (any of them) contain ``text`` (a substring, or a regex with ``regex``).

    Empty ``text`` matches every row. An invalid pattern raises BadQuery naming the pattern and the reason.
    """
    if not text:
        return np.ones(len(frame), dtype=bool)
    if regex:
        import re

        try:
            re.compile(text)
        except re.error as e:
            raise BadQuery(f"invalid regular expression {text!r}: {e}; untick 'regex' to search plain text") from None
    hit = np.zeros(len(frame), dtype=bool)
    for c in columns:
        hit |= frame[c].astype(str).str.contains(text, case=case, regex=regex, na=False).to_numpy()
    return hit


def _bound(x, name: str) -> float | None:
    if x is None or (isinstance(x, str) and not x.strip()):
        return None
    try:
        x = float(x)
    except ValueError:
        raise BadQuery(f"{name} bound {x!r} is not a number; type one (e.g. 0.5) or leave it empty") from None
    return None if np.isnan(x) else x


def range_mask(values, low=None, high=None, name: str = "value") -> np.ndarray:
    """``low <= values <= high``; an empty bound (None, NaN, "") is open. Low above high raises BadQuery."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = _bound(low, name), _bound(high, name)
    if lo is not None and hi is not None and lo > hi:
        raise BadQuery(f"{name} range: min {lo:g} is above max {hi:g}; swap them or clear one")
    ok = np.ones(v.shape, dtype=bool)
    if lo is not None:
        ok &= v >= lo
    if hi is not None:
        ok &= v <= hi
    return ok


def flag_mask(flags, choice: str, yes: str, no: str) -> np.ndarray:
    """``choice`` = ANY (every row), ``yes`` (rows where ``flags``) or ``no`` (rows where not)."""
    f = np.asarray(flags, dtype=bool)
    if choice in (None, "", ANY):
        return np.ones(f.shape, dtype=bool)
    if choice == yes:
        return f
    if choice == no:
        return ~f
    raise BadQuery(f"unknown choice {choice!r}; use {ANY}, {yes} or {no}")


def query_params(request) -> dict[str, str]:
    """The page URL's query parameters (``?run=...&step=...``) from a Gradio request; {} without one."""
    if request is None:
        return {}
    params = getattr(request, "query_params", None)
    return {str(k): str(v) for k, v in dict(params or {}).items()}


def share_query(**params) -> str:
    """``?k=v&...`` for the non-empty ``params`` (URL-encoded): a link to the same view on the same server."""
    from urllib.parse import urlencode

    return "?" + urlencode({k: v for k, v in params.items() if v is not None and str(v) != ""})


def csv_file(frame: pd.DataFrame, name: str) -> str:
    """Write ``frame`` to a fresh temporary ``name.csv`` (Gradio serves files from the temp dir) and return
    its path. A new folder per call: two sessions downloading at once never share a file."""
    import uuid

    path = _csv_dir() / uuid.uuid4().hex[:12] / f"{name}.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    return str(path)


_CSV_DIR = None


def _csv_dir():
    """One temporary folder per server process, removed when it exits (every search writes a CSV)."""
    global _CSV_DIR
    if _CSV_DIR is None:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        _CSV_DIR = Path(tempfile.mkdtemp(prefix="pfkit-inspect-"))
        atexit.register(shutil.rmtree, _CSV_DIR, ignore_errors=True)
    return _CSV_DIR


def token_html(tokens, values, titles, *, diverging: bool, scale: float | None = None) -> str:
    """Tokens as inline spans shaded by ``values`` (hover: ``titles``), whitespace kept, wrapped.

    ``diverging``: blue for positive, red for negative values, opacity |v| / scale (scale default max |v|);
    otherwise (log-probs, <= 0) red with opacity -v / scale, so unlikely tokens stand out. NaN: unshaded.
    """
    import html as _html

    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if scale is None:
        scale = float(np.abs(finite).max()) if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    spans = []
    for tok, x, title in zip(tokens, v, titles):
        if not np.isfinite(x):
            alpha, rgb = 0.0, "0,0,0"
        elif diverging:
            alpha, rgb = min(1.0, abs(x) / scale), ("40,100,220" if x > 0 else "220,50,50")
        else:
            alpha, rgb = min(1.0, max(0.0, -x) / scale), "220,50,50"
        spans.append(f'<span class="pfkit-tok" style="background: rgba({rgb},{alpha:.3f})" '
                     f'data-value="{x:.6g}" title="{_html.escape(str(title), quote=True)}">'
                     f"{_html.escape(str(tok))}</span>")
    return ('<div class="pfkit-tokens" style="font-family: monospace; white-space: pre-wrap; '
            'word-break: break-all; line-height: 1.6">' + "".join(spans) + "</div>")


class Runs:
    """The run an app was started on plus, by ``?run=DIR`` in a link, its sibling run folders.

    Each session keeps its folder's key in a State and the handlers look its data up here (each folder is
    read once and shared). A link may open folders beside the served run only (e.g. a demo's ppo/br/bw
    runs), never an arbitrary path on the server (the page may be reachable by others with --host 0.0.0.0).
    """

    def __init__(self, data, load: Callable[[str], object]):
        self.home, self.data, self._load = str(data.run.path), data, load
        self._runs = {self.home: data}

    def get(self, key):
        return self._runs.get(str(key or self.home), self.data)

    def open(self, path: str) -> tuple[str, str]:
        """(the key of the run this session shows, a status line): ``path`` if it reads, else the home run."""
        from pathlib import Path

        key = str(Path(path).expanduser().resolve()) if path else self.home
        home = Path(self.home).resolve()
        if key == str(home):
            return self.home, ""
        if Path(key).parent != home.parent:
            return self.home, warning(f"the link's run {path!r} is not beside the served run (only folders in "
                                      f"{home.parent} can be opened from a link). Showing {self.home}.")
        if key not in self._runs:
            try:
                self._runs[key] = self._load(key)
            except (RunFolderError, OSError, ValueError, KeyError) as e:
                return self.home, warning(f"could not open run {path!r} from the link: {str(e).rstrip('.')}. "
                                          f"Showing {self.home}.")
        return key, ""

    def link(self, key, **params) -> str:
        """``[Link to this view](?...)`` naming ``params`` (and the run, unless it is the served one)."""
        q = share_query(run=None if str(key or self.home) == self.home else key, **params)
        return f"[Link to this view]({q}) `{q}`"


def int_param(params: dict, name: str, allowed, default):
    """``params[name]`` as an int if it is one of ``allowed``, else ``default`` (a link with a stale value)."""
    try:
        v = int(params[name])
    except (KeyError, ValueError):
        return default
    return v if v in set(allowed) else default


# ------------------------------------------------------------------ search results (filtration, difficulty)
SHOWN = 200  # search results listed on the page; the CSV has them all


def results_table(found: pd.DataFrame, extra=(), limit: int = SHOWN) -> pd.DataFrame:
    """The search results as listed (first ``limit``): step, prompt, sample, reward, score, passed, the
    ``extra`` flag columns (e.g. ``kept``), the hack label when logged, and a response excerpt."""
    t = found.head(limit)
    out = pd.DataFrame({"step": t["step"].astype(int).to_numpy(), "prompt": t["pid"].to_numpy(),
                        "sample": t["sample_idx"].astype(int).to_numpy(), "reward": t["reward"].round(4).to_numpy(),
                        "score": t["score"].round(4).to_numpy(), "passed": t["passed"].to_numpy()})
    for c in (*extra, "hack"):
        if c in t.columns:
            out[c] = t[c].to_numpy()
    out["response"] = [" ".join(str(r).split())[:80] for r in t["response"]]
    return out


def csv_frame(found: pd.DataFrame, columns) -> pd.DataFrame:
    """What "download as CSV" writes: every matching row, the ``columns`` it has (no token lists)."""
    return found[[c for c in columns if c in found.columns]].reset_index(drop=True)


def search_markdown(found: pd.DataFrame, total: int, noun: str, parts: Callable[[pd.DataFrame], list[str]],
                    pick: str, limit: int = SHOWN) -> str:
    """"**n** of total <noun> match · <parts(found)> · ...", then what selecting a listed row does."""
    if found.empty:
        return f"**0** of {total} {noun} match."
    more = f" · listing the first {limit} (the CSV has all)" if len(found) > limit else ""
    return f"**{len(found)}** of {total} {noun} match · " + " · ".join(parts(found)) + more + f". {pick}"


def result_keys(found: pd.DataFrame, limit: int = SHOWN) -> list[tuple[int, str, int]]:
    """(step, prompt, sample) of the listed results, for a row pick."""
    shown = found.head(limit)
    return list(zip(shown["step"].astype(int).tolist(), shown["pid"].tolist(), shown["sample_idx"].astype(int).tolist()))


def results_block(button: str, button_id: str, csv0: str | None, md0: str, table0, keys0, *, table_id: str,
                  label: str, max_height: int = 360):
    """The search button, the CSV download, the summary line, the results list and the listed rows' keys
    (one layout in every app; build inside the app's Blocks). Returns those five components."""
    import gradio as gr

    with gr.Row():
        btn = gr.Button(button, variant="primary", scale=0, min_width=120, elem_id=button_id)
        download = gr.DownloadButton("Download this view as CSV", size="sm", scale=0, min_width=220,
                                     elem_id="download", value=csv0)
    md = gr.Markdown(md0, elem_id="found")
    table = gr.Dataframe(table0, label=label, interactive=False, elem_id=table_id, max_height=max_height)
    return btn, download, md, table, gr.State(keys0)


def results_update(md: str, table, csv: pd.DataFrame, csv_name: str, keys) -> tuple:
    """The new values of ``results_block``'s outputs (summary, list, download, keys) after a search."""
    import gradio as gr

    return md, table, gr.DownloadButton(value=csv_file(csv, csv_name)), keys


def picked(evt, keys):
    """The key of the results row a ``.select`` event picked (``evt.index`` is [row, col]); None if stale."""
    r = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if r is None or not keys or not 0 <= int(r) < len(keys):
        return None
    return keys[int(r)]


def text_query_row(fields):
    """The search's text box, regex tick and field choice (``fields``: the choices), in one row."""
    import gradio as gr

    with gr.Row():
        text = gr.Textbox(label="text contains", elem_id="q-text", scale=3,
                          placeholder="e.g. return x + 4   (regex: tick the box)")
        regex = gr.Checkbox(label="regex", value=False, elem_id="q-regex", scale=0, min_width=90)
        where = gr.Radio(choices=list(fields), value=next(iter(fields)), label="search in", elem_id="q-fields", scale=2)
    return text, regex, where


def bound_boxes(name: str, elem: str):
    """A (min, max) pair of text boxes: not gr.Number, whose emptied box sends 0 (empty must mean no bound)."""
    import gradio as gr

    return (gr.Textbox(label=f"{name} min", placeholder="no bound", elem_id=f"q-{elem}min"),
            gr.Textbox(label=f"{name} max", placeholder="no bound", elem_id=f"q-{elem}max"))


def hack_radio(visible: bool, flagged: str, clean: str):
    import gradio as gr

    return gr.Radio(choices=[ANY, flagged, clean], value=ANY, label="reward hack (sandbox)", elem_id="q-hack",
                    visible=visible, info="flagged = the sandbox's hack column is non-empty")


# ------------------------------------------------------------------ figures sent once (any app)
class PlotCache:
    """Figures as a ``gr.Plot`` sends them (its PlotData: the webp encoded once), keyed by what drew them.

    Drawing and encoding a matplotlib figure costs ~0.3-2 s of CPU; without a cache every page load and
    every revisited step pays it again, and on a 2-core machine that work overlaps the next page's load
    (issue #20: the difficulty app's second load was the slow one). One cache per run's data object, so a
    reload (which swaps in a fresh object) starts empty; at most ``size`` figures are kept (least recent out).
    """

    def __init__(self, size: int = 96):
        import threading
        from collections import OrderedDict

        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()
        self.misses = 0

    def __call__(self, key, draw: Callable[[], object]):
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
                return hit
        from gradio import processing_utils
        from gradio.components.plot import PlotData

        fig = draw()
        hit = PlotData(type="matplotlib", plot=processing_utils.encode_plot_to_base64(fig, "webp"))
        with self._lock:
            self.misses += 1
            self._d[key] = hit
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return hit
