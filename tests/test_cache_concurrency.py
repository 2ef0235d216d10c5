"""GENBENCH_CACHE shared by processes that start at once: the domain classifier is trained once
(the others wait for it and reuse it), every cache file is written whole, and later evals
trust it. Real processes (spawned, and real `genbench eval` commands), a real tiny dataset."""
import multiprocessing
import os
import re
import subprocess
import sys

import pytest

from testing.evalkit import image_folder

SIZE = 16  # the tiny ImageFolder's image size


def _ensure_after_barrier(cache: str, dataset: str, barrier, results) -> None:
    """A spawned process: imports first, then all call ensure_domain at the same moment."""
    import contextlib
    import io

    os.environ["GENBENCH_CACHE"] = cache
    from eval.domain_classifier import ensure_domain

    err = io.StringIO()
    barrier.wait(timeout=120)
    with contextlib.redirect_stderr(err):
        _, meta = ensure_domain(dataset, None, SIZE, epochs=40, quiet=False)
    results.put(("training the domain classifier" in err.getvalue(), meta["sha256"]))


@pytest.mark.slow
def test_processes_that_miss_at_once_train_the_classifier_once(tmp_path, monkeypatch):
    """Two processes ask for the same uncached classifier at the same instant: exactly one
    trains it (40 epochs: long enough that both would train without the lock), the others wait
    and get the same weights, and the slot's sha256 record matches its file."""
    from eval.domain_classifier import cached_domain

    dataset = image_folder(tmp_path / "images", size=SIZE)
    cache = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch's threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_ensure_after_barrier, args=(cache, dataset, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    found = [results.get(timeout=5) for _ in procs]
    assert sum(trained for trained, _ in found) == 1, found
    assert len({sha for _, sha in found}) == 1
    monkeypatch.setenv("GENBENCH_CACHE", cache)
    path, meta = cached_domain(dataset, SIZE, "e40")  # raises if the record disagrees
    assert meta["sha256"] == found[0][1]
    # no temp file left behind: only the weights, their record and the slot's lock file
    assert sorted(p.suffix for p in path.parent.iterdir()) == [".json", ".lock", ".pt"]


def _tiny_checkpoint(directory, dataset: str, seed: int) -> str:
    import torch

    from pipeline.config import Config
    from pipeline.data import load_split
    from pipeline.loop import build_nets
    from testing.evalkit import TINY, save_checkpoint

    cfg = Config.from_dict({"model": "gan", "gan": TINY["gan"], "train": {"seed": seed},
                            "data": {"dataset": dataset, "image_size": SIZE}})
    torch.manual_seed(seed)
    train = load_split(dataset, "train", None, cfg.data.val_fraction, cfg.data.split_seed, SIZE)
    nets, opts = build_nets(cfg, train, torch.device("cpu"), 1)
    save_checkpoint(directory, cfg, nets, opts)
    return str(directory)


@pytest.mark.slow
def test_two_evals_at_once_on_a_fresh_cache_then_a_third_trusts_it(tmp_path, monkeypatch,
                                                                   capsys):
    """Two `genbench eval` of different checkpoints start together on an empty GENBENCH_CACHE:
    both succeed, one trains the domain classifier and the other reuses it; a third eval
    afterwards neither trains nor rewrites it."""
    from eval.domain_classifier import domain_paths
    from pipeline import tracking

    dataset = image_folder(tmp_path / "images", size=SIZE)
    checkpoints = [_tiny_checkpoint(tmp_path / f"ck{seed}", dataset, seed) for seed in (1, 2)]
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the store's tables exist before two processes write into it at once
    tracking.experiment_id(tracking.client(), "genbench-eval")

    def command(checkpoint):
        return subprocess.Popen(
            [sys.executable, "-m", "genbench", "eval", "--checkpoint", checkpoint,
             "--metrics", "fid", "--n-fake", "10", "--n-real", "10"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [command(c) for c in checkpoints]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert re.search(r"fid_domain\s+\d", out), out
    trained = ["training the domain classifier" in err for _, err in outs]
    assert sum(trained) == 1, [err[-2000:] for _, err in outs]
    run_ids = {re.search(r"MLflow run ([0-9a-f]{32})", out).group(1) for out, _ in outs}
    assert len(run_ids) == 2                           # two runs, each with its own metrics

    pt_path, _ = domain_paths(dataset, SIZE)
    before = pt_path.stat().st_mtime_ns, pt_path.stat().st_ino
    from genbench.cli import main  # the third in this process: one interpreter start less
    assert main(["eval", "--checkpoint", checkpoints[0], "--metrics", "fid", "--n-fake", "10",
                 "--n-real", "10"]) == 0
    assert "training the domain classifier" not in capsys.readouterr().err
    assert (pt_path.stat().st_mtime_ns, pt_path.stat().st_ino) == before
