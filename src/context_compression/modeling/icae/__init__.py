from .configuration_icae import ICAEConfig
from .modeling_icae import CompressedContext, ICAECausalLMOutputWithPast, ICAEForCausalLM, ICAEPreTrainedModel


__all__ = ["CompressedContext", "ICAECausalLMOutputWithPast", "ICAEConfig", "ICAEForCausalLM", "ICAEPreTrainedModel"]
