"""Gradio inspectors over run folders; apps/*.py are thin launchers for these."""
