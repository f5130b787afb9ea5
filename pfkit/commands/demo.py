"""``pfkit demo pfppo|vade|noisemask``: each method end to end on the embedded default."""

from __future__ import annotations

from pfkit.commands import add_choices

DEMOS = {
    "pfppo": ("pfkit.demos.pfppo", "SFT policy -> reward model -> PPO vs PF-PPO (BR, BW): the main job"),
    "vade": ("pfkit.demos.vade", "GRPO with uniform vs dapo_filter vs VADE prompt sampling"),
    "noisemask": ("pfkit.demos.noisemask", "noise-mask REINFORCE pretraining -> fine-tune vs baseline"),
}
#: printed under a --quick demo's table: its sizes are chosen to finish in minutes, so its numbers (all
#: samplers equal, a reversed conclusion) say nothing about the methods
QUICK_CAVEAT = ("[pfkit] --quick: smoke-test sizes, not a result (run without --quick, or `pfkit study`, "
                "for figures)")


def add_arguments(parser):
    add_choices(parser, DEMOS, "demo", dispatch=main)


def _shipped_configs(module) -> None:
    """A demo that names the checkout's ``configs/`` folder (its ``CONFIGS`` global, read at call time) gets
    the package's copy when that folder is not there: a wheel install has only ``pfkit/configs``."""
    from pathlib import Path

    from pfkit.cli import CONFIGS

    folder = getattr(module, "CONFIGS", None)
    if isinstance(folder, Path) and not folder.is_dir():
        module.CONFIGS = CONFIGS


def main(args):
    import sys

    _shipped_configs(sys.modules[args._choice_main.__module__])
    rc = args._choice_main(args)
    if getattr(args, "quick", False):
        print(QUICK_CAVEAT, flush=True)
    return rc
