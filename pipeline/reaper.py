"""Nothing left behind: a small watchdog process that, once the genbench driver that started a
local Ray is gone (finished, failed, SIGTERMed or SIGKILLed), ends whatever that Ray left.

Ray ties its GCS and raylet to the driver, but not everything follows them: after a SIGKILLed
driver, its dashboard and runtime-env agents were seen alive with parent 1, and after an hour of
fault runs, three `ray::TrainController` workers of ~1 GB each. The watchdog runs in its own
session (a signal to the driver's process group does not reach it), notes the driver's
descendants every second, and after the driver ends gives them a few seconds to exit on their
own, then SIGTERM, then SIGKILL. It exits when it is done; it never touches a process that was
not the driver's descendant (pid reuse is ruled out by each process's start time).

    python -m pipeline.reaper DRIVER_PID
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 1.0       # how often the driver's descendants are noted
GRACE_S = 3.0      # after the driver ends: time for Ray's own shutdown before SIGTERM
TERM_WAIT_S = 5.0  # after SIGTERM: time before SIGKILL


def start() -> subprocess.Popen | None:
    """Watch this process (a driver that just started its own Ray). None where psutil is
    missing: the watchdog is a safety net, not a requirement."""
    try:
        import psutil  # noqa: F401 (comes with ray[default])
    except ImportError:
        return None
    return subprocess.Popen([sys.executable, "-m", "pipeline.reaper", str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def watch(driver_pid: int) -> None:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    seen: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        _note(driver, seen, me)
        time.sleep(POLL_S)
    time.sleep(GRACE_S)
    for process in list(seen.values()):  # children started after the last look
        _note(process, seen, me)
    alive = [p for p in seen.values() if p.is_running()]
    for process in alive:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=TERM_WAIT_S)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def _note(parent, seen: dict, me: int) -> None:
    import psutil

    try:
        children = parent.children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        if child.pid != me:
            seen.setdefault(child.pid, child)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
