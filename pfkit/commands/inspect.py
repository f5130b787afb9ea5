"""``pfkit inspect filtration|difficulty|noisemask RUN_DIR [--port N]``: the Gradio inspectors."""

from __future__ import annotations

import importlib

from pfkit.commands import add_choices

APPS = {
    "filtration": ("pfkit.inspect.filtration", "PF-PPO samples: rewards, tests, kept/dropped, R²"),
    "difficulty": ("pfkit.inspect.difficulty", "VADE Beta posteriors, selections, zero-variance groups"),
    "noisemask": ("pfkit.inspect.noisemask", "noise-mask policy: alpha/beta maps, masks, accuracy"),
}
#: the class that reads each app's run folder (the apps show its errors as a page; the command exits instead)
READERS = {"filtration": "Rollouts", "difficulty": "Difficulty", "noisemask": "NoiseMasks"}


def add_arguments(parser):
    add_choices(parser, APPS, "app", dispatch=main)


def main(args):
    """Read the run folder first: a wrong folder is a one-line error and exit code 2, not a server that
    shows an error page and never exits (the app's own error page stays for folders that break later)."""
    from pfkit.errors import UserError
    from pfkit.inspect import _common as C
    from pfkit.runs import RunFolderError

    mod = importlib.import_module(APPS[args.app][0])
    try:
        data = getattr(mod, READERS[args.app])(args.run_dir)
    except RunFolderError as e:
        raise UserError(f"{e} (pfkit inspect {args.app} RUN_DIR)") from e
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not read the run {args.run_dir}: {type(e).__name__}: {e}") from e
    return C.launch(mod._build(data), args)
