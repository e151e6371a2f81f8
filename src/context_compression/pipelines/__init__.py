"""Registers the `context-compression` pipeline task with transformers on import."""

from transformers import AutoModelForCausalLM
from transformers.pipelines import PIPELINE_REGISTRY

from .context_compression import ContextCompressionPipeline


PIPELINE_REGISTRY.register_pipeline(
    "context-compression", pipeline_class=ContextCompressionPipeline, pt_model=AutoModelForCausalLM
)

__all__ = ["ContextCompressionPipeline"]
