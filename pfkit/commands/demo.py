"""``pfkit demo pfppo|vade|noisemask``: each method end to end on the embedded default."""

from __future__ import annotations

from pfkit.commands import add_choices

DEMOS = {
    "pfppo": ("pfkit.demos.pfppo", "SFT policy -> reward model -> PPO vs PF-PPO (BR, BW): the main job"),
    "vade": ("pfkit.demos.vade", "GRPO with uniform vs dapo_filter vs VADE prompt sampling"),
    "noisemask": ("pfkit.demos.noisemask", "noise-mask REINFORCE pretraining -> fine-tune vs baseline"),
}


def add_arguments(parser):
    add_choices(parser, DEMOS, "demo")


def main(args):
    return args._main(args)
