"""Per-stage wall time and CPU time of a `genbench bench` (or `make run`) command.

Runs the command, reads the bench's stage lines from its stderr as they come (`[i/n] name  (...
elapsed)` when a stage starts, `[i/n] name: done in S s ...` or `failed` when it ends: the bench
runs independent stages at once), and samples the CPU time of the whole process tree (the
driver, Ray's raylet and its workers) every half second. Each sample's CPU time is shared evenly
by the stages running then. On a busy machine wall time says little; CPU seconds say what the
stage would cost on a quiet one: with 2 cores, about CPU / 2 where torch uses both threads.

    python -m benchmarks.stage_times [--log FILE] [--limit S] -- genbench bench --preset quick
    python -m benchmarks.stage_times --smoke      # a stand-in command of two short stages

--limit S (or Ctrl-C) interrupts the command as Ctrl-C would and still prints the table.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time

from benchmarks.common import add_smoke, print_table

STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.+?)  \(")
END = re.compile(r"^\[(\d+)/(\d+)\] (.+?): (?:done|failed|stopped) in ")
BEFORE, BETWEEN = "before the first stage", "between stages"
TICK = os.sysconf("SC_CLK_TCK")
# --smoke without a command: two stages that print the bench's stage lines and burn a little CPU
SMOKE_COMMAND = [sys.executable, "-c", "import sys, time\n"
                 "for i, name in enumerate(('spin', 'sleep'), 1):\n"
                 "    print(f'[{i}/2] {name}  (0s elapsed)', file=sys.stderr, flush=True)\n"
                 "    t = time.time()\n"
                 "    while name == 'spin' and time.time() - t < 0.6: pass\n"
                 "    time.sleep(0.6)\n"
                 "    print(f'[{i}/2] {name}: done in 1 s', file=sys.stderr, flush=True)\n"]


def tree_cpu(root: int, seen: dict[int, float]) -> float:
    """CPU seconds of root and its descendants; seen keeps the last value of every pid, so the
    time of processes that have ended still counts."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            seen[pid] = max(seen.get(pid, 0.0), stats[pid])
        todo += children.get(pid, [])
    return sum(seen.values())


def load() -> float:
    return os.getloadavg()[0]


class Ledger:
    """Wall and CPU time per stage, stages overlapping or not. Samples (time, CPU seconds) and
    stage starts/ends are recorded as they come and shared out at the end: the CPU time between
    two samples goes to the stages running then, evenly (before the first stage and in gaps: a
    row of its own). A command that printed no end lines (older benches): a stage ends where
    the next starts."""

    def __init__(self, now: float, cpu: float):
        self.t0 = now
        self.samples: list[tuple[float, float]] = [(now, cpu)]
        self.starts: dict[str, tuple[float, float]] = {}   # name -> (time, load)
        self.ends: dict[str, float] = {}

    def sample(self, now: float, cpu: float) -> None:
        self.samples.append((now, cpu))

    def start(self, name: str, now: float, cpu: float) -> None:
        self.sample(now, cpu)
        self.starts[name] = (now, load())

    def end(self, name: str, now: float, cpu: float) -> None:
        self.sample(now, cpu)
        self.ends[name] = now

    def table(self, now: float) -> list[list[str]]:
        order = sorted(self.starts, key=lambda n: self.starts[n][0])
        ends = dict(self.ends)
        if not ends:  # one after another: each ends where the next starts
            for name, after in zip(order, order[1:] + [None]):
                ends[name] = self.starts[after][0] if after else now
        spans = {n: (self.starts[n][0], ends.get(n, now)) for n in order}
        cpu = dict.fromkeys(order, 0.0)
        before = between = gap_wall = 0.0
        first = self.starts[order[0]][0] if order else now
        for (t1, c1), (t2, c2) in zip(self.samples, self.samples[1:]):
            mid = (t1 + t2) / 2
            running = [n for n, (a, b) in spans.items() if a <= mid < b]
            if running:
                for n in running:
                    cpu[n] += (c2 - c1) / len(running)
            elif mid < first:
                before += c2 - c1
            else:
                between += c2 - c1
                gap_wall += t2 - t1
        rows = [[BEFORE, "0", f"{first - self.t0:.0f}", f"{before:.0f}", f"{before / 2:.0f}",
                 f"{load():.1f}" if not order else f"{self.starts[order[0]][1]:.1f}"]]
        for n in order:
            a, b = spans[n]
            rows.append([n, f"{a - self.t0:.0f}", f"{b - a:.0f}", f"{cpu[n]:.0f}",
                         f"{cpu[n] / 2:.0f}", f"{self.starts[n][1]:.1f}"])
        if gap_wall >= 1 or between >= 1:
            rows.append([BETWEEN, "", f"{gap_wall:.0f}", f"{between:.0f}",
                         f"{between / 2:.0f}", ""])
        return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", help="also write the command's stderr here")
    ap.add_argument("--limit", type=float, help="interrupt the command (SIGINT) after this "
                    "many seconds")
    add_smoke(ap)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd and args.smoke:
        cmd = SMOKE_COMMAND
    if not cmd:
        ap.error("give the command after -- (or --smoke for a stand-in)")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)

    def interrupt(*_):  # the command stops as after Ctrl-C; the table still gets printed
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    # restored at the end: main() may run inside another program (the smoke test)
    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen: dict[int, float] = {}
    ledger = Ledger(time.time(), 0.0)
    lock = threading.Lock()
    log = open(args.log, "w") if args.log else None

    def read():
        for line in proc.stderr:
            sys.stderr.write(line)
            if log:
                log.write(line)
                log.flush()
            started, ended = STAGE.match(line.strip()), END.match(line.strip())
            if started or ended:
                with lock:
                    cpu = tree_cpu(proc.pid, seen)
                    if started:
                        ledger.start(started.group(3), time.time(), cpu)
                    else:
                        ledger.end(ended.group(3), time.time(), cpu)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    loads = []
    while proc.poll() is None:
        if args.limit and time.time() - t0 > args.limit:
            interrupt()
            args.limit = None
        with lock:
            ledger.sample(time.time(), tree_cpu(proc.pid, seen))
        loads.append(load())
        time.sleep(0.5)
    reader.join(5)
    with lock:
        ledger.sample(time.time(), sum(seen.values()))
    total_cpu = sum(seen.values())
    rows = ledger.table(time.time())
    rows.append(["total", "", f"{time.time() - t0:.0f}", f"{total_cpu:.0f}",
                 f"{total_cpu / 2:.0f}", f"mean {sum(loads) / max(1, len(loads)):.1f}"])
    print(file=sys.stderr)
    print_table(["stage", "start s", "wall s", "CPU s", "CPU/2 s", "load at start"], rows,
                file=sys.stderr)
    print(f"exit code {proc.returncode}", file=sys.stderr)
    for sig, handler in old.items():
        signal.signal(sig, handler)
    if log:
        log.close()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
