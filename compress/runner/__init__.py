"""The run: steps in order, format boundaries, benchmarks, gates, the run folder and the step cache."""

from compress.runner.run import Runner

__all__ = ["Runner"]
