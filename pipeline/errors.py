"""Errors the user can fix: the CLI prints their one-line message and exits with code 2."""


class ConfigError(ValueError):
    """Bad input: a wrong name, value, path or checkpoint. The message says what and how to fix."""


class RunStopped(RuntimeError):
    """A run that stopped before its end (Ctrl-C, a lost tracking server, failed workers) with
    its checkpoints kept. The message says how to continue it; the CLI prints it as one line and
    exits with `exit_code` (130 after Ctrl-C, as shells expect, else 1)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
