"""pfkit: reinforcement learning that filters or chooses training samples by how reliable or informative they are.

Three methods, one kit: PF-PPO (policy filtration for PPO), VADE-augmented GRPO, and noise-mask
REINFORCE pretraining. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"
