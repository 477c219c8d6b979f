"""The streaming pipeline: stage contracts, the threaded runner and its metrics."""

from livefuse.pipeline.metrics import Metrics, RunStats
from livefuse.pipeline.pipeline import Pipeline
from livefuse.pipeline.stages import Analyzer, Sink, Source, SourceInfo, Swapper

__all__ = ["Analyzer", "Metrics", "Pipeline", "RunStats", "Sink", "Source", "SourceInfo", "Swapper"]
