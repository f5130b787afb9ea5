"""Gradio inspectors over run folders; apps/*.py are thin launchers for these."""

from __future__ import annotations

import importlib


def preview(name: str, run_dir, launch: bool = False):
    """Build inspector ``name`` (filtration | difficulty | noisemask) on ``run_dir`` from a notebook.

    Prints the equivalent command; with ``launch`` serves it non-blocking on 127.0.0.1, prints the link,
    and returns the app still running (stop it with ``app.close()``).
    """
    app = importlib.import_module(f"pfkit.inspect.{name}").build_app(run_dir)
    print(f"pfkit inspect {name} {run_dir}")
    if launch:
        app.launch(prevent_thread_lock=True, server_name="127.0.0.1")
        print("serving at", app.local_url)
    return app
