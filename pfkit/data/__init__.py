"""LightningDataModules and prompt samplers."""
