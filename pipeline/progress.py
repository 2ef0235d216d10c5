"""Training progress on the driver without reading the tracking store back: rank 0 posts logged
points (at most one a second) to a small Ray actor (a call it does not wait for), and a driver
thread long-polls the actor and prints one line per point. Works wherever the workers run (Ray
carries the calls), whether or not Ray forwards worker output to the driver (it does not unless
--verbose)."""
from __future__ import annotations

import asyncio
import sys
import threading
import time

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Points posted by rank 0, handed to the driver in order."""

    def __init__(self):
        self._points: list[dict] = []
        self._posted = asyncio.Event()

    async def post(self, point: dict) -> None:
        self._points.append(point)
        self._posted.set()

    async def take(self, timeout: float) -> list[dict]:
        """Every point posted since the last take; waits up to timeout for one."""
        if not self._points:
            try:
                await asyncio.wait_for(self._posted.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        points, self._points = self._points, []
        self._posted.clear()
        return points

    async def wake(self) -> None:
        """Ends the driver's pending take now: the run is over, its last points are posted."""
        self._posted.set()


# At most one progress line per this many seconds (points with validation scores and the last
# point always): a GPU logs many points a second, and every post is an actor call that takes
# CPU from the training process on a small machine. MLflow still gets every point.
POST_EVERY_S = 1.0


class Poster:
    """Rank 0's progress function for pipeline.loop.fit: posts without waiting for a reply, at
    most one point per `every` seconds; close() posts the last point if it was held back."""

    def __init__(self, board, every: float = POST_EVERY_S):
        self.board, self.every = board, every
        self.posted_at, self.held = -float("inf"), None

    def __call__(self, metrics: dict) -> None:
        now = time.monotonic()
        if now - self.posted_at < self.every and not any(k.startswith("val_") for k in metrics):
            self.held = dict(metrics)
            return
        self.board.post.remote(dict(metrics))
        self.posted_at, self.held = now, None

    def close(self) -> None:
        if self.held is not None:
            self.board.post.remote(self.held)
            self.held = None


def progress_line(point: dict, total: int, keys: tuple[str, ...], elapsed: float) -> str:
    """'  step 40/300 | bpd 4.21 | val_bpd 4.3 | 5120 img/s | 12s'."""
    parts = [f"step {int(point['step'])}/{total}"]
    for key in keys:
        parts += [f"{name} {point[name]:.4g}" for name in (key, f"val_{key}") if name in point]
    if "images_per_s" in point:
        parts.append(f"{point['images_per_s']:.0f} img/s")
    parts.append(f"{elapsed:.0f}s")
    return "  " + " | ".join(parts)


class ProgressPrinter(threading.Thread):
    """The driver's side: owns the board, prints what rank 0 posts to it."""

    def __init__(self, total: int, keys: tuple[str, ...], stream=None):
        super().__init__(daemon=True, name="genbench-progress")
        self.total, self.keys, self.stream = total, keys, stream  # None: sys.stderr when printing
        self.board = ProgressBoard.remote()
        self.stop_event, self.t0 = threading.Event(), time.time()

    def run(self) -> None:
        while True:
            stopping = self.stop_event.is_set()
            try:  # a short last take after the run: points still on their way
                points = ray.get(self.board.take.remote(0.5 if stopping else 2.0), timeout=60)
            except Exception:  # the board is gone or Ray is shutting down: nothing to print
                return
            # An async actor may run one caller's posts out of order.
            for point in sorted(points, key=lambda p: p.get("step", 0)):
                print(progress_line(point, self.total, self.keys, time.time() - self.t0),
                      file=self.stream or sys.stderr, flush=True)
            if stopping:
                return

    def stop(self) -> None:
        self.stop_event.set()
        self.board.wake.remote()  # a take may wait up to 2 s more; each run paid it at its end
        if self.is_alive():
            self.join(timeout=10)
        ray.kill(self.board)
