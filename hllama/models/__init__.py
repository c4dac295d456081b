"""Models as files: pulling and caching them (hub), where a model's files are and how it will load (source),
what it will take (footprint, the GGUF header) and what the machine has (hardware)."""
