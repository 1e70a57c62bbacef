"""The OpenAI-style video API (/v1/videos), its streaming endpoints and the realtime WebSocket."""
