"""`genbench train --resume RUN_ID` continues a run with its saved config: an option it would
ignore is refused by name (one line, exit 2) before Ray starts, never silently dropped."""
import pytest

from genbench.cli import main
from pipeline import tracking

RUN = "f" * 32  # never looked up: the refusal comes first


@pytest.mark.parametrize("option", [["--workers", "2"], ["--steps", "10"], ["--epochs", "2"],
                                    ["--gpu"], ["--storage-path", "/tmp/elsewhere"],
                                    ["--seed", "3"], ["--model", "vae"],
                                    ["--dataset", "mnist"], ["--set", "vae.beta=2"],
                                    ["--config", "c.yaml"]])
def test_an_option_resume_ignores_is_refused_by_name(option, workdir, mlflow_uri, capsys):
    import ray

    ray_before = ray.is_initialized()  # the session's Ray, where an earlier test started it
    assert main(["train", "--resume", RUN, *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("genbench: error: --resume continues a run with its saved config")
    assert f"ignore {option[0]};" in err[0]
    assert ray.is_initialized() == ray_before  # refused before Ray starts
    assert not (workdir / "ray_results").exists()


def test_several_are_named_together(workdir, mlflow_uri, capsys):
    assert main(["train", "--resume", RUN, "--workers", "2", "--gpu", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ignore --workers, --gpu, --steps; drop them" in err[0]


def test_experiment_must_be_the_runs_own(workdir, mlflow_uri, capsys):
    """--experiment with --resume: the run's own experiment is accepted (it gets as far as
    finding no checkpoint), another is refused."""
    run_id = tracking.start_run("mine", "ae", {"model": "ae"}, {"genbench.kind": "train"})
    tracking.end_run(run_id, "KILLED")
    capsys.readouterr()
    assert main(["train", "--resume", run_id, "--experiment", "other"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in its own MLflow experiment 'mine', not --experiment 'other'" \
        in err[0]
    code = main(["train", "--resume", run_id, "--experiment", "mine"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--experiment" not in err   # refused later, for its missing checkpoint
