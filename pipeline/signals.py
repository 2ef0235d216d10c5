"""SIGTERM handled like Ctrl-C. `timeout`, Slurm, Kubernetes and spot reclaims stop a process
with SIGTERM; by default it would end the driver at once (and Ray's own failure handler, which
ray.init installs in the driver, prints a C++ stack dump first), leaving the MLflow run RUNNING.

Terminated subclasses KeyboardInterrupt, so every place that already stops cleanly on Ctrl-C
(mark the run KILLED, print how to resume) does the same on SIGTERM; only the exit code
differs: 143 (128 + SIGTERM) instead of 130, as shells and schedulers expect.
"""
from __future__ import annotations

import signal
import threading

EXIT_CODE = 128 + signal.SIGTERM   # 143


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Make SIGTERM raise Terminated in the main thread. Call it again after ray.init(): Ray
    replaces the handler with its own (the stack dump). No-op off the main thread, where Python
    cannot set handlers (e.g. a stage run from a thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """143 after SIGTERM, 130 after Ctrl-C."""
    return EXIT_CODE if isinstance(interrupt, Terminated) else 130
