"""End-to-end demos on the embedded defaults (`pfkit demo ...`)."""
