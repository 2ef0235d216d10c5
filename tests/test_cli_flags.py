"""`--verbose` is a top-level flag and a subcommand flag: either place turns it on, and a
subcommand that does not repeat it keeps the top-level one (its own default once overwrote it)."""
import pytest

from genbench.cli import make_parser


@pytest.mark.parametrize("argv", [["--verbose", "train"], ["train", "--verbose"],
                                  ["--verbose", "tune"], ["--verbose", "bench"],
                                  ["--verbose", "eval", "--run-id", "x"],
                                  ["--verbose", "report", "--experiment", "x"]])
def test_verbose_from_either_place(argv):
    assert make_parser().parse_args(argv).verbose is True


@pytest.mark.parametrize("argv", [["train"], ["tune"], ["bench"], ["eval", "--run-id", "x"],
                                  ["report", "--experiment", "x"]])
def test_verbose_off_by_default(argv):
    assert make_parser().parse_args(argv).verbose is False
