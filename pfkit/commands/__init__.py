"""Sub-commands of ``pfkit`` other than fit/validate/test. Each module has add_arguments(parser) and main(args)."""

from __future__ import annotations

import argparse


def add_choices(parser: argparse.ArgumentParser, table: dict[str, tuple[str, str, int]], dest: str) -> None:
    """Add one sub-parser per choice; each delegates to ``module.add_arguments``/``module.main``.

    ``table`` maps choice -> (module, help, issue). A choice whose module has not landed yet still
    shows in --help and fails with a clear message naming the issue, never a traceback.
    """
    from pfkit.cli import _not_ready, import_optional

    argv = getattr(parser, "_pfkit_argv", None)
    requested = argv[0] if argv else None
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), required=True)
    for name, (module, text, issue) in table.items():
        p = sub.add_parser(name, help=text, description=text)
        # import only the chosen choice's module (all of them when argv is unknown)
        mod = import_optional(module) if argv is None or name == requested else None
        if mod is None:
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(_main=_not_ready(f"{parser.prog.split()[-1]} {name}", issue))
        else:
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
