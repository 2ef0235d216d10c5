"""genbench/stage_pool.py, the scheduler `genbench bench` runs its stages with: independent stages
overlap within their slots, an "alone" stage runs with nothing else, a failing stage is one line
and the others go on, each stage's output comes whole at its end, and Ctrl-C stops the running
stages. Real threads and real time (each test well under 10 s); the tiny bench in
tests/test_bench.py shows a training run and an evaluation overlapping in MLflow."""
import _thread
import re
import signal
import time

import pytest

from genbench.stage_pool import StagePool
from pipeline.errors import ConfigError


def overlaps(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def chatty(tag: str, lines: int = 5, pause: float = 0.05):
    """A stage that prints a few lines with pauses between them (to interleave, if it could)."""
    def fn():
        for i in range(lines):
            print(f"{tag} line {i}")
            time.sleep(pause)
        return tag
    return fn


def test_independent_stages_overlap_and_alone_runs_alone(capsys):
    pool = StagePool(ray_slots=2, driver_slots=1, heartbeat_s=0.2)
    pool.add("train a", chatty("a", 6, pause=0.15), kind="ray")
    pool.add("train b", chatty("b", 6), kind="ray")
    pool.add("train c", chatty("c", 2), kind="ray")          # waits for a free slot
    pool.add("eval a", chatty("ea", 2), kind="driver", after={"train a"})
    pool.add("scaling", chatty("s", 2), kind="alone")
    pool.add("report", chatty("r", 1), kind="alone")
    results = pool.run()
    assert results["train a"] == "a" and results["report"] == "r" and not pool.failed
    times = {name: (name, start, end) for name, start, end in pool.timeline()}

    assert overlaps(times["train a"], times["train b"])         # two Ray slots: both at once
    running_with_c = [n for n in ("train a", "train b") if overlaps(times[n], times["train c"])]
    assert len(running_with_c) <= 1                             # never three at once
    assert times["eval a"][1] >= times["train a"][2]            # after its training
    for name in ("train a", "train b", "train c", "eval a"):    # alone: nothing beside it
        assert not overlaps(times[name], times["scaling"])
    assert times["report"][1] >= times["scaling"][2]

    out, err = capsys.readouterr()
    # each stage's output whole, in one block: no line of another stage in between
    for tag, n in (("a", 6), ("b", 6), ("c", 2), ("ea", 2)):
        lines = out.splitlines()
        at = lines.index(f"{tag} line 0")
        assert lines[at:at + n] == [f"{tag} line {i}" for i in range(n)], out
    starts = re.findall(r"^\[(\d+)/6\] (.+?)  \(", err, re.M)   # what stage_times.py reads
    assert sorted(name for _, name in starts) == sorted(pool.stages)
    assert len(re.findall(r"^\[\d/6\] .+: done in \d+ s", err, re.M)) == 6
    board = [line for line in err.splitlines() if line.startswith("  running: ")]
    assert any("train a " in line for line in board), err        # the compact board


def test_a_failing_stage_is_one_line_and_the_others_finish(capsys):
    def boom():
        time.sleep(0.2)
        raise RuntimeError("the sampler ran out of memory")

    def skipped():
        raise ConfigError("skipped: no trained b")

    pool = StagePool(ray_slots=2, driver_slots=1, heartbeat_s=60)
    pool.add("train a", chatty("a", 8), kind="ray")
    pool.add("train b", boom, kind="ray")
    pool.add("eval b", skipped, kind="driver", after={"train b"})
    pool.add("report", chatty("r", 1), kind="alone")
    results = pool.run()

    assert pool.failed == ["train b", "eval b"]
    assert results["train a"] == "a" and results["report"] == "r"   # the rest went on
    assert results["train b"] is None
    times = {name: (name, start, end) for name, start, end in pool.timeline()}
    assert overlaps(times["train a"], times["train b"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genbench: stage")]
    assert lines == ["genbench: stage 'train b' failed: the sampler ran out of memory",
                     "genbench: stage 'eval b' failed: skipped: no trained b"]
    assert "[2/4] train b: failed in" in err
    assert "Traceback" in err and "ConfigError" not in err   # a ConfigError is its one line


def test_ctrl_c_stops_the_running_stages_and_starts_no_more(capsys, request):
    ticks = []

    def long_stage():
        for _ in range(100):          # 10 s unless stopped
            ticks.append(time.time())
            time.sleep(0.1)

    def interrupt():
        time.sleep(0.3)
        _thread.interrupt_main()      # as Ctrl-C: KeyboardInterrupt in the main thread

    # a pytest-xdist worker ignores SIGINT, and interrupt_main() then does nothing: give the
    # main thread Python's own Ctrl-C handler, as a terminal's genbench has
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    pool = StagePool(ray_slots=2, driver_slots=1, heartbeat_s=60)
    pool.add("train a", long_stage, kind="ray")
    pool.add("train b", interrupt, kind="ray")
    pool.add("report", chatty("r", 1), kind="alone")
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
        pool.run()
    assert time.time() - start < 5
    a = pool.stages["train a"]
    assert a.ended is not None and isinstance(a.error, KeyboardInterrupt)
    assert ticks[-1] < a.ended                       # it stopped ticking
    assert pool.stages["report"].started is None     # nothing more started
    assert "train a: stopped in" in capsys.readouterr().err


def test_one_at_a_time_keeps_the_order_and_prints_as_it_goes(capsys):
    pool = StagePool(ray_slots=2, driver_slots=2, max_running=1, hold_output=False)
    for name in ("train a", "train b"):
        pool.add(name, chatty(name[-1], 2), kind="ray")
    pool.add("eval a", chatty("ea", 1), kind="driver", after={"train a"})
    pool.run()
    order = sorted(pool.timeline(), key=lambda row: row[1])
    assert [name for name, _, _ in order] == ["train a", "train b", "eval a"]
    for (_, _, end), (_, start, _) in zip(order, order[1:]):
        assert start >= end


def test_progress_bars_in_held_output_keep_their_last_state(capsys):
    def bars():
        import sys
        for i in range(3):
            sys.stderr.write(f"\rsampling: {i}/2")
        sys.stderr.write("\r" + " " * 20 + "\r")        # tqdm leave=False clears its bar
        sys.stderr.write("\rencoding: 0/5\rencoding: 5/5\n")
        sys.stderr.write("\rbits/dim: 0/9")                # a last bar without its newline
        print("table row")

    pool = StagePool(ray_slots=1, driver_slots=1)
    pool.add("eval a", bars, kind="driver")
    pool.run()
    out, err = capsys.readouterr()
    assert out == "table row\n"
    assert "sampling" not in err and "encoding: 5/5\n" in err and "encoding: 0/5" not in err
    assert err.endswith("bits/dim: 0/9\n")      # the next stage's line starts a line of its own


def test_stage_times_shares_cpu_among_overlapping_stages():
    """benchmarks/stage_times.py reads the pool's start and end lines: overlapping stages each
    get their own wall time and an even share of the CPU time spent while both ran."""
    from benchmarks.stage_times import END, STAGE, Ledger

    assert STAGE.match("[1/9] train ae  (0.0 min elapsed)").group(3) == "train ae"
    assert END.match("[1/9] train ae: done in 58 s (1.0 min elapsed)").group(3) == "train ae"
    assert not STAGE.match("[1/9] train ae: done in 58 s (1.0 min elapsed)")
    ledger = Ledger(0.0, 0.0)
    ledger.start("train a", 1.0, 0.0)
    ledger.start("train b", 1.0, 0.0)
    ledger.sample(11.0, 20.0)          # both running: 20 CPU s, 10 each
    ledger.end("train a", 11.0, 20.0)
    ledger.sample(21.0, 30.0)          # b alone: 10 more
    ledger.end("train b", 21.0, 30.0)
    rows = {row[0]: row for row in ledger.table(22.0)}
    assert rows["train a"][1:4] == ["1", "10", "10"]
    assert rows["train b"][1:4] == ["1", "20", "20"]
