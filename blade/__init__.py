"""BLADE reproduction suite: data, models, sampling, rewards, metrics, alignment, tracking."""

__version__ = "0.1.0"
