"""LightningModules: orchestration only; the math lives in pfkit.rl and pfkit.noise."""
