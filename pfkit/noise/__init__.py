"""Noise-mask policy, mask sampling/application and REINFORCE losses (pure torch)."""
