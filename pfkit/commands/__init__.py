"""Sub-commands of ``pfkit`` other than fit/validate/test. Each module has add_arguments(parser) and main(args)."""

from __future__ import annotations

import argparse


def add_choices(parser: argparse.ArgumentParser, table: dict[str, tuple[str, str]], dest: str,
                dispatch=None) -> None:
    """Add one sub-parser per choice; each delegates to ``module.add_arguments``/``module.main``.

    ``table`` maps choice -> (module, help). Only the chosen choice's module is imported (all of them when
    the command line is unknown), so ``pfkit demo vade`` does not import gradio or monai. ``dispatch``
    (a ``main(args)``) runs instead of the choice's ``main``, which it then finds as ``args._choice_main``.
    """
    import importlib

    argv = getattr(parser, "_pfkit_argv", None)
    requested = argv[0] if argv else None
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), required=True)
    for name, (module, text) in table.items():
        p = sub.add_parser(name, help=text, description=text)
        if argv is None or name == requested:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_main=dispatch or mod.main, _choice_main=mod.main)
        else:  # never dispatched: only the chosen choice is parsed
            p.add_argument("rest", nargs=argparse.REMAINDER)
