"""Scheduling: decisions only, no torch."""
