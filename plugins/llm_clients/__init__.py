"""Built-in LLM clients."""
