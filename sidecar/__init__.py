"""The openai-runtime sidecar: a localhost OpenAI-compatible server that holds the runner."""
