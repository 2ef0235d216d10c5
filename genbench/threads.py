"""How many threads an evaluation inside `genbench bench` computes with.

A bench evaluates in its own process while training runs go on beside it (genbench/stage_pool.py).
torch and OpenBLAS (numpy, which torch-fidelity's FID and KID run on) each start a thread per
core by default; beside two 1-CPU training workers on 2 cores that makes 6 busy threads, and
OpenBLAS's spinning threads lose most of their time to the others (measured on 2 loaded cores:
one FID of 2,000 x 128 features took 44 ms on 1 thread and 159 ms on 2). An evaluation gets the
cores no training run holds, at least one, for as long as it runs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads and the BLAS libraries' threads set to n, restored after."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def free_cpus(training_cpus: int) -> int:
    """This machine's cores less those the running training runs hold (at least one)."""
    return max(1, (os.cpu_count() or 1) - training_cpus)
