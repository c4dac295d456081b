"""The local transformers engine: load a model, build its prompt, stream its answer. Other packages reach the
engine only through the names here (none of which imports torch until a model is used)."""

from hllama.engine.embed import MAX_INPUTS, Embeddings, embed, normalized
from hllama.engine.events import END, Finished, Stats, TokenLogprob
from hllama.engine.generate import Generation, stream
from hllama.engine.grammar import Structure, structure_of, thinking_mode
from hllama.engine.infill import folder_can_infill, infill_ids
from hllama.engine.loaded import LoadedModel
from hllama.engine.loader import load_model
from hllama.engine.prompt import Prompt, answer_room, build_prompt, conversation
from hllama.engine.thinking import ThinkingParts, supports_thinking
from hllama.engine.tokens import token_ids
from hllama.engine.tools import ToolCalls, ToolCallStream, parse_tool_calls, supports_tools

__all__ = ["END", "MAX_INPUTS", "Embeddings", "Finished", "Generation", "LoadedModel", "Prompt", "Stats",
           "Structure", "ThinkingParts", "TokenLogprob", "ToolCallStream", "ToolCalls", "answer_room", "build_prompt",
           "conversation", "embed", "folder_can_infill", "infill_ids", "load_model", "normalized",
           "parse_tool_calls", "stream", "structure_of", "supports_thinking", "supports_tools", "thinking_mode",
           "token_ids"]
