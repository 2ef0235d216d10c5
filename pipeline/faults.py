"""Deterministic fault injection, for fault-tolerance tests: GENBENCH_FAULT names a rank, a step
and what happens there, e.g.

    GENBENCH_FAULT="rank=1,step=150,action=kill"              # SIGKILL rank 1 after step 150
    GENBENCH_FAULT="rank=0,step=40,action=pause,seconds=30"   # rank 0 sleeps 30 s after step 40
    GENBENCH_FAULT="rank=1,step=150,action=stop"              # SIGSTOP rank 1: a stalled rank

The driver reads it and hands it to the workers (pipeline/train.py), which fire it once per run:
the restarted worker group that a kill leads to goes on without firing it again.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from pipeline.errors import ConfigError

ENV = "GENBENCH_FAULT"
ACTIONS = ("kill", "pause", "stop")


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    action: str = "kill"
    seconds: float = 60.0                     # how long a pause lasts
    prepare: Callable[[], None] | None = None  # run just before firing (records that it fired)

    def fire(self) -> None:
        if self.prepare is not None:
            self.prepare()
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: nothing is flushed or closed
        if self.action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)  # a stall: alive, silent, until someone kills it
        time.sleep(self.seconds)


def parse(text: str | None) -> Fault | None:
    """GENBENCH_FAULT's value -> Fault (None when unset); a malformed value is a ConfigError."""
    if not text:
        return None
    usage = f"{ENV}={text!r} is not understood; use e.g. rank=1,step=150,action=kill|pause|stop"
    try:
        fields = dict(part.split("=", 1) for part in text.replace(" ", "").split(","))
        fault = Fault(rank=int(fields.pop("rank")), step=int(fields.pop("step")),
                      action=fields.pop("action", "kill"),
                      seconds=float(fields.pop("seconds", 60.0)))
    except (KeyError, ValueError):
        raise ConfigError(usage) from None
    if fields or fault.action not in ACTIONS or fault.rank < 0 or fault.step < 1:
        raise ConfigError(usage)
    return fault
