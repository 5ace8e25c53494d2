"""Prefect flows composing the round steps of tasks/ (and the `al` command)."""
