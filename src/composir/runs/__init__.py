"""Runs: the run config, the checkpoint format, and the single model factory every command uses."""

from composir.runs.config import RunConfig, load_config
from composir.runs.factory import build_from_config, build_untrained, load_run

__all__ = ["RunConfig", "build_from_config", "build_untrained", "load_config", "load_run"]
