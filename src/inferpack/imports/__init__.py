"""Bring your own models: `inferpack models import` turns Hugging Face folders, hub ids from the local cache
and TorchScript files into checked repository versions (see docs/models.md)."""
