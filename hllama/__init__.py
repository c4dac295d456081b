"""hllama: Ollama's ease for Hugging Face models."""

__version__ = "0.1.0"
