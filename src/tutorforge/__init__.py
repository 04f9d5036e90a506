"""tutorforge: fine-tune, merge, export to GGUF, ship to Ollama, compare."""
__version__ = "0.1.0"
