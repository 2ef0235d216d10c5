"""`python -m genbench ...` = the `genbench` console script."""
import sys

from genbench.cli import main

sys.exit(main())
