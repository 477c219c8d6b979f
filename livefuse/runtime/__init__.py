"""Model runners: one interface, several runtimes."""

from livefuse.runtime.base import Runner, TensorSpec
from livefuse.runtime.ort import OrtRunner, available_providers

__all__ = ["OrtRunner", "Runner", "TensorSpec", "available_providers"]
