"""Thin wiring: settings, the Faust app and agents, the embedded runtime and the CLI."""
