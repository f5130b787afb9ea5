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


def main(args):
    rc = args._choice_main(args)
    if getattr(args, "quick", False):
        print(QUICK_CAVEAT, flush=True)
    return rc
