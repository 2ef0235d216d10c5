"""genbench/threads.py: an evaluation inside a bench computes on the cores its training runs
leave, with torch's and the BLAS libraries' threads both held to that, and both restored."""
import numpy  # noqa: F401  (loads the BLAS library threadpoolctl then sees)
import torch
from threadpoolctl import threadpool_info

from genbench.threads import compute_threads, free_cpus


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_compute_threads_holds_torch_and_blas_and_restores_them():
    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    with compute_threads(1):
        assert torch.get_num_threads() == 1
        assert blas_threads() == {1}
    assert torch.get_num_threads() == torch_before
    assert blas_threads() == blas_before


def test_free_cpus_leaves_at_least_one(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert free_cpus(0) == 2
    assert free_cpus(1) == 1
    assert free_cpus(2) == 1        # two 1-CPU runs beside it: it still gets a thread
