"""Runs `genbench bench`'s stages concurrently where they do not depend on each other, within
what the machine (or cluster) holds, and keeps the output readable.

Three kinds of stage:
- "ray": a Ray Train run or a sweep; at most `ray_slots` at once (the runs' CPUs/GPUs are sized
  so that that many fit: genbench/bench.py), so Ray never queues one behind another;
- "driver": an evaluation, computed in this process; at most `driver_slots` at once;
- "alone": runs with nothing else (the scaling runs measure throughput; the report reads every
  run): it waits for every stage added before it, and every stage added after waits for it.

A stage starts when the stages it comes `after` have ended, however they ended (an evaluation
of a failed training says it was skipped, as before). A failing stage is reported and the
others go on; `failed` lists it and the bench exits 1, as when the stages ran one by one.

Output: one `[i/n] name  (x min elapsed)` line when a stage starts (the line
benchmarks/stage_times.py reads), one `[i/n] name: done in S s` (or `failed`) when it ends,
followed by what the stage printed (held back while it ran, so two stages never interleave),
and every `heartbeat_s` a `  running: ...` line naming the stages still running.
"""
from __future__ import annotations

import ctypes
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import ConfigError

KINDS = ("ray", "driver", "alone")


@dataclass
class Stage:
    name: str
    fn: Callable
    kind: str
    after: set = field(default_factory=set)    # names of stages that must end first
    index: int = 0
    started: float | None = None               # time.time() at start and end
    ended: float | None = None
    result: object = None
    error: BaseException | None = None
    thread: threading.Thread | None = None
    out: list = field(default_factory=list)    # (stream, text) it printed, held back
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Router:
    """Stands in for sys.stdout / sys.stderr while stages run: what a stage's thread writes is
    held in that stage's buffer; every other thread writes straight through."""

    def __init__(self, real, which: str, owners: dict):
        self._real, self._which, self._owners = real, which, owners

    def write(self, text: str) -> int:
        stage = self._owners.get(threading.get_ident())
        if stage is None:
            return self._real.write(text)
        with stage.lock:
            stage.out.append((self._which, text))
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding...: the real stream's
        return getattr(self._real, name)


class StagePool:
    def __init__(self, ray_slots: int = 1, driver_slots: int = 1, heartbeat_s: float = 60.0,
                 max_running: int | None = None, hold_output: bool = True):
        """max_running: stages at once, of any kind (1: one after another, as before);
        hold_output False: stages print as they go (fine when one runs at a time)."""
        self.slots = {"ray": max(1, ray_slots), "driver": max(1, driver_slots)}
        self.max_running = max_running or self.slots["ray"] + self.slots["driver"]
        self.heartbeat_s, self.hold_output = heartbeat_s, hold_output
        self.stages: dict[str, Stage] = {}
        self.failed: list[str] = []
        self.t0 = time.time()
        self._barrier: str | None = None   # the last "alone" stage added: later ones wait for it
        self._changed = threading.Condition()
        self._owners: dict[int, Stage] = {}

    def add(self, name: str, fn: Callable, kind: str = "ray", after=()) -> Stage:
        if kind not in KINDS:
            raise ValueError(f"stage kind {kind!r}; use one of {', '.join(KINDS)}")
        if name in self.stages:
            raise ValueError(f"two stages named {name!r}")
        deps = set(after)
        if kind == "alone":
            deps |= set(self.stages)
        elif self._barrier:
            deps.add(self._barrier)
        unknown = deps - set(self.stages)
        if unknown:
            raise ValueError(f"stage {name!r} comes after unknown stage(s) {sorted(unknown)}")
        stage = Stage(name, fn, kind, deps, index=len(self.stages) + 1)
        self.stages[name] = stage
        if kind == "alone":
            self._barrier = name
        return stage

    # -- running ------------------------------------------------------------------------------

    def run(self) -> dict:
        """Runs every stage; returns {name: what its fn returned} (None where it failed).
        Ctrl-C or SIGTERM stops the running stages as they stop alone, then is raised again."""
        self.t0 = time.time()
        real_out, real_err = sys.stdout, sys.stderr
        if self.hold_output:
            sys.stdout = _Router(real_out, "stdout", self._owners)
            sys.stderr = _Router(real_err, "stderr", self._owners)
        self._real = {"stdout": real_out, "stderr": real_err}
        try:
            self._schedule()
        except KeyboardInterrupt as stop:
            self._stop_running(stop)
            raise
        finally:
            sys.stdout, sys.stderr = real_out, real_err
        stopped = [s.error for s in self.stages.values()
                   if getattr(s.error, "exit_code", None) in (130, 143)]
        if stopped:
            raise stopped[0]
        return {name: s.result for name, s in self.stages.items()}

    def _schedule(self) -> None:
        beat = time.time()
        with self._changed:
            while True:
                running = [s for s in self.stages.values() if s.started and not s.ended]
                waiting = [s for s in self.stages.values() if not s.started]
                if any(getattr(s.error, "exit_code", None) in (130, 143)
                       for s in self.stages.values()):
                    waiting = []  # a stage was stopped (Ctrl-C reached it): start nothing more
                if not running and not waiting:
                    return
                for stage in waiting:
                    if self._can_start(stage, running):
                        self._start(stage)
                        running.append(stage)
                # short waits: Ctrl-C is handled between them
                self._changed.wait(timeout=min(0.5, self.heartbeat_s))
                if time.time() - beat >= self.heartbeat_s:
                    beat = time.time()
                    self._heartbeat()

    def _can_start(self, stage: Stage, running: list) -> bool:
        if any(not self.stages[d].ended for d in stage.after):
            return False
        if stage.kind == "alone" or any(s.kind == "alone" for s in running):
            return not running
        return (len(running) < self.max_running
                and sum(s.kind == stage.kind for s in running) < self.slots[stage.kind])

    def _start(self, stage: Stage) -> None:
        stage.started = time.time()
        self._say("stderr", f"\n[{stage.index}/{len(self.stages)}] {stage.name}  "
                            f"({(stage.started - self.t0) / 60:.1f} min elapsed)\n")
        stage.thread = threading.Thread(target=self._body, args=(stage,), daemon=True,
                                        name=f"stage {stage.name}")
        stage.thread.start()

    def _body(self, stage: Stage) -> None:
        self._owners[threading.get_ident()] = stage
        try:
            stage.result = stage.fn()
        except BaseException as exc:  # reported below; the bench goes on
            stage.error = exc
            stopped = getattr(exc, "exit_code", None) in (130, 143) \
                or isinstance(exc, KeyboardInterrupt)
            if not stopped and not isinstance(exc, ConfigError):
                print("".join(traceback.format_exception(exc, limit=3)).rstrip(),
                      file=sys.stderr)
        finally:
            self._owners.pop(threading.get_ident(), None)
            ended = time.time()
            self._finish(stage, ended)  # its lines first, then dependents may start
            stage.ended = ended
            with self._changed:
                self._changed.notify_all()

    def _finish(self, stage: Stage, ended: float) -> None:
        """The stage's end line, then what it printed, then (failed) the one line why."""
        seconds = ended - stage.started
        how = "done" if stage.error is None else (
            "stopped" if isinstance(stage.error, KeyboardInterrupt)
            or getattr(stage.error, "exit_code", None) in (130, 143) else "failed")
        with stage.lock:
            held, stage.out = stage.out, []
        lines = [("stderr", f"[{stage.index}/{len(self.stages)}] {stage.name}: {how} in "
                            f"{seconds:.0f} s ({(ended - self.t0) / 60:.1f} min elapsed)\n")]
        lines += [(which, _settled(text)) for which, text in _joined(held)]
        if how == "failed":
            self.failed.append(stage.name)
            lines.append(("stderr", f"genbench: stage {stage.name!r} failed: {stage.error}\n"))
        elif how == "stopped" and str(stage.error):  # a training says how to resume it
            lines.append(("stderr", f"genbench: stage {stage.name!r} stopped: {stage.error}\n"))
        self._say(*lines[0])
        for which, text in lines[1:]:
            self._say(which, text)

    _print_lock = threading.Lock()

    def _say(self, which: str, text: str) -> None:
        with self._print_lock:
            stream = self._real[which]
            stream.write(text)
            stream.flush()

    def _heartbeat(self) -> None:
        now = time.time()
        running = [f"{s.name} {(now - s.started) / 60:.1f} min" for s in self.stages.values()
                   if s.started and not s.ended]
        if running:
            self._say("stderr", f"  running: {', '.join(running)}\n")

    def _stop_running(self, stop: KeyboardInterrupt) -> None:
        """Ctrl-C / SIGTERM reach only the main thread: raise the same in every running stage's
        thread (a training then marks its MLflow run KILLED and says how to resume, as when it
        runs alone) and give them a while to finish."""
        running = [s for s in self.stages.values() if s.started and not s.ended]
        for stage in running:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(stage.thread.ident),
                                                       ctypes.py_object(type(stop)))
        deadline = time.time() + 60
        for stage in running:
            stage.thread.join(max(0.0, deadline - time.time()))

    def running(self, kind: str) -> int:
        """How many stages of this kind are running now."""
        return sum(1 for s in list(self.stages.values())
                   if s.kind == kind and s.started and not s.ended)

    def timeline(self) -> list[tuple[str, float, float]]:
        """(name, start, end) of every stage that ran, in seconds from the pool's start."""
        return [(s.name, s.started - self.t0, s.ended - self.t0)
                for s in self.stages.values() if s.started and s.ended]


def _joined(held: list) -> list:
    """Consecutive writes to one stream as one text."""
    out: list = []
    for which, text in held:
        if out and out[-1][0] == which:
            out[-1] = (which, out[-1][1] + text)
        else:
            out.append((which, text))
    return out


def _settled(text: str) -> str:
    """What a terminal would show at the end, ending with a newline: a progress bar redrawn
    with \r keeps its last state, one cleared away (blanks, as tqdm leave=False) is dropped."""
    lines = []
    for line in text.split("\n"):
        if "\r" not in line:
            lines.append(line)
            continue
        last = next((part for part in reversed(line.split("\r")) if part), "")
        if last.strip():
            lines.append(last)
    out = "\n".join(lines)
    return out if not out or out.endswith("\n") else out + "\n"
