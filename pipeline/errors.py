"""Errors the user can fix: the CLI prints their one-line message and exits with code 2."""


class ConfigError(ValueError):
    """Bad input: a wrong name, value, path or checkpoint. The message says what and how to fix."""
