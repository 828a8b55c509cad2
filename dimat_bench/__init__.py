"""dimat-bench: a reproducible benchmark of decentralized deep learning (DIMAT and its baselines)."""

__version__ = "0.1.0"
