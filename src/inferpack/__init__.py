"""inferpack: serve thousands of unique PyTorch models cheaply and prove it with numbers."""

from __future__ import annotations

__version__ = "0.1.0"
