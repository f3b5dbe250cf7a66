"""Subcommands of the `mlusim` CLI, one module each."""
