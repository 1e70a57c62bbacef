"""Ways in: the CLI, the OpenAI-style HTTP server."""
