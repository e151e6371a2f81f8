"""context-compression: learned LLM context compression as Hugging Face models.

Importing the package registers every method's config and model with the `Auto*` classes, marks them for
remote-code saving (so `save_pretrained` writes `auto_map` and the modeling files), and registers the
`context-compression` pipeline.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .modeling.icae import CompressedContext, ICAECausalLMOutputWithPast, ICAEConfig, ICAEForCausalLM
from .pipelines import ContextCompressionPipeline  # registers the "context-compression" pipeline task
from .trainers import ICAEDataCollator, ICAETrainer, ICAETrainingArguments


__version__ = "0.1.0"

AutoConfig.register(ICAEConfig.model_type, ICAEConfig, exist_ok=True)
AutoModel.register(ICAEConfig, ICAEForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(ICAEConfig, ICAEForCausalLM, exist_ok=True)
ICAEConfig.register_for_auto_class()
ICAEForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "CompressedContext",
    "ContextCompressionPipeline",
    "ICAECausalLMOutputWithPast",
    "ICAEConfig",
    "ICAEDataCollator",
    "ICAEForCausalLM",
    "ICAETrainer",
    "ICAETrainingArguments",
    "__version__",
]
