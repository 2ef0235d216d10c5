"""Per-stage wall time and CPU time of a `genbench bench` (or `make run`) command.

Runs the command, reads the bench's stage lines (`[i/n] name  (... elapsed)`) from its stderr
as they come, and samples the CPU time of the whole process tree (the driver, Ray's raylet and
its workers) every half second. On a busy machine wall time says little; CPU seconds say what
the stage would cost on a quiet one: with 2 cores, about CPU / 2 where torch uses both threads.

    python benchmarks/stage_times.py [--log FILE] [--limit S] -- genbench bench --preset quick

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

STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.+?)  \(")
TICK = os.sysconf("SC_CLK_TCK")


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", help="also write the command's stderr here")
    ap.add_argument("--limit", type=float, help="interrupt the command (SIGINT) after this "
                    "many seconds")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)

    def interrupt(*_):  # the command stops as after Ctrl-C; the table still gets printed
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    seen: dict[int, float] = {}
    marks = [("start", time.time(), 0.0, load())]
    lock = threading.Lock()
    log = open(args.log, "w") if args.log else None

    def read():
        for line in proc.stderr:
            sys.stderr.write(line)
            if log:
                log.write(line)
                log.flush()
            m = STAGE.match(line.strip())
            if m:
                with lock:
                    marks.append((m.group(3), time.time(), tree_cpu(proc.pid, seen), load()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    loads = []
    while proc.poll() is None:
        if args.limit and time.time() - t0 > args.limit:
            interrupt()
            args.limit = None
        with lock:
            tree_cpu(proc.pid, seen)
        loads.append(load())
        time.sleep(0.5)
    reader.join(5)
    marks.append(("end", time.time(), sum(seen.values()), load()))
    print(f"\n| stage | wall s | CPU s | CPU/2 s | load at start |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for (name, t, cpu, ld), (_, t2, cpu2, _) in zip(marks, marks[1:]):
        name = "before the first stage" if name == "start" else name
        print(f"| {name} | {t2 - t:.0f} | {cpu2 - cpu:.0f} | {(cpu2 - cpu) / 2:.0f} | {ld:.1f} |",
              file=sys.stderr)
    total_cpu = marks[-1][2]
    print(f"| total | {time.time() - t0:.0f} | {total_cpu:.0f} | {total_cpu / 2:.0f} | mean "
          f"{sum(loads) / max(1, len(loads)):.1f} |", file=sys.stderr)
    print(f"exit code {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
