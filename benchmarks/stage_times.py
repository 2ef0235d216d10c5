"""Per-stage wall time and CPU time of a `genbench bench` (or `make run`) command.

Runs the command, reads the bench's stage lines (`[i/n] name  (... elapsed)`) from its stderr
as they come, and samples the CPU time of the whole process tree (the driver, Ray's raylet and
its workers) every half second. On a busy machine wall time says little; CPU seconds say what
the stage would cost on a quiet one: with 2 cores, about CPU / 2 where torch uses both threads.

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
TICK = os.sysconf("SC_CLK_TCK")
# --smoke without a command: two stages that print the bench's stage lines and burn a little CPU
SMOKE_COMMAND = [sys.executable, "-c", "import sys, time\n"
                 "for i, name in enumerate(('spin', 'sleep'), 1):\n"
                 "    print(f'[{i}/2] {name}  (0s elapsed)', file=sys.stderr, flush=True)\n"
                 "    t = time.time()\n"
                 "    while name == 'spin' and time.time() - t < 0.6: pass\n"
                 "    time.sleep(0.6)\n"]


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
    total_cpu = marks[-1][2]
    rows = [["before the first stage" if name == "start" else name, f"{t2 - t:.0f}",
             f"{cpu2 - cpu:.0f}", f"{(cpu2 - cpu) / 2:.0f}", f"{ld:.1f}"]
            for (name, t, cpu, ld), (_, t2, cpu2, _) in zip(marks, marks[1:])]
    rows.append(["total", f"{time.time() - t0:.0f}", f"{total_cpu:.0f}", f"{total_cpu / 2:.0f}",
                 f"mean {sum(loads) / max(1, len(loads)):.1f}"])
    print(file=sys.stderr)
    print_table(["stage", "wall s", "CPU s", "CPU/2 s", "load at start"], rows, file=sys.stderr)
    print(f"exit code {proc.returncode}", file=sys.stderr)
    for sig, handler in old.items():
        signal.signal(sig, handler)
    if log:
        log.close()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
