"""Engines: the offline HeliosEngine (and, later, the async serving engine)."""
