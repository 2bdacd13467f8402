"""Declarative pipelines (YAML lists of medseg commands), run and resumed step by step."""

from medseg.workflows.runner import Pipeline, PipelineError, Step, load_pipeline, run_pipeline

__all__ = ["Pipeline", "PipelineError", "Step", "load_pipeline", "run_pipeline"]
