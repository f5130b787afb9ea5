"""``pfkit inspect filtration|difficulty|noisemask RUN_DIR [--port N]``: the Gradio inspectors."""

from __future__ import annotations

from pfkit.commands import add_choices

APPS = {
    "filtration": ("pfkit.inspect.filtration", "PF-PPO samples: rewards, tests, kept/dropped, R²"),
    "difficulty": ("pfkit.inspect.difficulty", "VADE Beta posteriors, selections, zero-variance groups"),
    "noisemask": ("pfkit.inspect.noisemask", "noise-mask policy: alpha/beta maps, masks, accuracy"),
}


def add_arguments(parser):
    add_choices(parser, APPS, "app")


def main(args):
    return args._main(args)
