"""Sinks: where encoded messages go."""
