"""Progress bars for the slow parts of eval (sampling, feature extraction, bits/dim), on stderr."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def bar(total: float, desc: str, unit: str = "img", quiet: bool = False):
    """A tqdm bar (torch-fidelity already depends on tqdm); disabled when quiet."""
    with tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=False, file=sys.stderr,
              mininterval=1.0, dynamic_ncols=True) as progress:
        yield progress
