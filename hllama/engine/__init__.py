"""The engine: load a model, build its prompt, stream its answer. Front ends use only this API."""

from hllama.engine.generate import Finished, Stats, stream
from hllama.engine.loader import LoadedModel, ModelSource, load_model, locate, plan_load
from hllama.engine.prompt import Prompt, build_prompt, conversation

__all__ = ["Finished", "LoadedModel", "ModelSource", "Prompt", "Stats", "build_prompt", "conversation",
           "load_model", "locate", "plan_load", "stream"]
