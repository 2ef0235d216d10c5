"""Every benchmark runs end to end at --smoke size (each family's TINY, a few steps, one repeat)
and prints its table: a header row and one row per family or case. The numbers mean nothing
here; that the benchmarks still run against today's code is what is tested. Those that start
Ray Train or sweeps run on the session's Ray (`ray_local`), in this process."""
import pytest
import torch

from pipeline.config import Config
from pipeline.models import FAMILIES, can

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The Markdown tables in text: (header cells, rows of cells), in order."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and all(set(c) <= set("-:") for c in block[1]):
            found.append((block[0], block[2:]))
        block = []
    return found


def first_column(table) -> list[str]:
    header, rows = table
    assert all(len(row) == len(header) for row in rows), table
    return [row[0] for row in rows]


def test_every_family_has_a_tiny_size_that_builds_smaller_than_its_default():
    from benchmarks.common import tiny, tiny_sets

    shape = (1, 28, 28)
    for name in FAMILIES:
        family = FAMILIES[name]
        size = tiny(name)
        if name in ("ae", "vae", "gan", "pixelcnn", "transformer"):  # the built-ins declare one
            assert size, name
        assert tiny_sets(name) == [f"{name}.{k}={v}" for k, v in size.items()]
        small = Config.from_dict({"model": name, name: size}).family
        default = Config.from_dict({"model": name}).family

        def params(cfg):
            return sum(p.numel() for net in family.build(cfg, shape, 0).values()
                       for p in net.parameters())
        assert not size or params(small) < params(default), name


def test_the_suites_sizes_are_the_families_own(fast_sets):
    from testing.evalkit import TINY, tiny_config

    assert fast_sets("gan")[:4] == ["--set", "gan.width=8", "--set", "gan.latent_dim=16"]
    for name in FAMILIES:
        assert TINY[name] == getattr(FAMILIES[name], "TINY", {})
        assert tiny_config(name).to_dict()[name] == {
            **Config.from_dict({"model": name}).to_dict()[name], **TINY[name]}


def test_sampling_speed(capsys):
    from benchmarks import sampling_speed

    assert sampling_speed.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    [table] = tables(out)
    assert first_column(table) == ["reference", "cached", "cached"]
    assert "2/2 images identical" in out  # the cached sampler agrees with the reference


def test_eval_throughput(capsys):
    from benchmarks import eval_throughput

    assert eval_throughput.main(["--smoke"]) == 0
    [table] = tables(capsys.readouterr().out)
    tasks = first_column(table)
    assert tasks[:2] == ["features: domain (28x28, CNN)",
                         "features: inception (random weights, 299x299)"]
    for name in FAMILIES:
        assert (f"sampling: {name}" in tasks) == can(FAMILIES[name], "sample"), name
        assert any(t.startswith(f"bits/dim: {name} ") for t in tasks) == can(FAMILIES[name],
                                                                              "nll"), name


def test_ar_budget(capsys):
    from benchmarks import ar_budget

    ar_budget.main(["--smoke"])
    [table] = tables(capsys.readouterr().out)
    assert first_column(table) == list(ar_budget.FAMILIES)
    assert all(float(row[5].strip("*")) > 0 for row in table[1])  # test bits/dim


def test_stage_times(capsys):
    from benchmarks import stage_times

    assert stage_times.main(["--smoke"]) == 0
    [table] = tables(capsys.readouterr().err)
    assert first_column(table) == ["before the first stage", "spin", "sleep", "total"]


def test_gpu_check_sizes_and_loop_stand_in():
    """Without CUDA: every family has a batch (the Transformer lacked one), --smoke parses,
    and the logger stand-in still satisfies the loop (timed_fit on the CPU)."""
    from benchmarks import gpu_check
    from benchmarks.common import tiny

    args = gpu_check.parse_args(["--smoke"])
    assert args.smoke and args.steps == 10
    for name in FAMILIES:
        assert gpu_check.batch_size(name) > 0
    assert gpu_check.batch_size("transformer") == gpu_check.BATCH["transformer"]
    cfg = Config.from_dict({"model": "ae", "ae": tiny("ae"), "train": {
        "steps": 6, "batch_size": 16, "log_every": 2, "eval_every": 10**9,
        "checkpoint_every": 10**9}})
    rate, marks = gpu_check.timed_fit(cfg, 6, 2, device="cpu")
    assert [step for step, _ in marks] == [2, 4, 6] and rate > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gpu_check needs CUDA (nccl, bf16)")
def test_gpu_check_on_a_gpu(capsys):
    from benchmarks import gpu_check

    gpu_check.main(["--smoke"])
    [table] = tables(capsys.readouterr().out)
    assert first_column(table) == list(FAMILIES)


@pytest.mark.slow
def test_ood_check(domain_classifier, tmp_path, monkeypatch, capsys):
    """Two families, one without a likelihood and one with (every family: ~80 s on 2 cores);
    it trains a classifier without the unseen class too."""
    from benchmarks import ood_check

    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    ood_check.main(["--smoke", "--families", "ae,vae", "--device", "cpu",
                    "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    found = {tuple(header): (header, rows) for header, rows in tables(out)}
    ood = found[("family", "unseen", "digits", "noise")]
    assert first_column(ood) == ["ae", "vae"]
    bayes = next(t for h, t in found.items() if h[:2] == ("model", "accuracy"))
    assert first_column(bayes) == ["vae"]  # Bayes' rule needs p(x|y)
    assert (tmp_path / "out" / "ood_check.json").is_file()


@pytest.fixture
def private_env(monkeypatch, workdir):
    """The benchmarks point MLFLOW_TRACKING_URI at their own store and may chdir: undone after."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'unused.db'}")
    return workdir


@pytest.mark.slow
def test_train_throughput(ray_local, private_env, capsys):
    from benchmarks import train_throughput

    train_throughput.main(["--smoke", "--families", "ae"])
    [table] = tables(capsys.readouterr().out)
    assert first_column(table) == ["ae"]
    assert float(table[1][0][4]) > 0  # the median pair ratio


@pytest.mark.slow
def test_worker_overhead(ray_local, private_env, capsys):
    from benchmarks import worker_overhead

    worker_overhead.main(["--smoke", "--family", "ae"])
    [table] = tables(capsys.readouterr().out)
    assert first_column(table) == ["genbench, checkpoints", "genbench, no checkpoints",
                                   "plain loop"]


@pytest.mark.slow
def test_tune_overhead(ray_local, private_env, monkeypatch, capsys):
    from benchmarks import tune_overhead

    monkeypatch.chdir(private_env)  # it changes directory: back after the test
    assert tune_overhead.main(["--smoke"]) == 0
    overhead, schedulers = tables(capsys.readouterr().out)
    assert first_column(overhead) == ["single-worker, loop in the trial",
                                      "2 workers, TorchTrainer in the trial"]
    assert first_column(schedulers) == ["FIFO", "ASHA"]


@pytest.mark.slow
@pytest.mark.fault  # make test-faults
def test_tracking_outage(capsys):
    """A real mlflow server down for 5 s under a real genbench train (its own Ray)."""
    from benchmarks import tracking_outage

    assert tracking_outage.main(["--smoke"]) == 0
    [(header, rows)] = tables(capsys.readouterr().out)
    assert header[0] == "outage s" and len(rows) == 1
    outage, alive, code, status, restarted, once = rows[0][:6]
    assert (alive, code, status, restarted, once) == ("yes", "0", "FINISHED", "no", "yes")


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: it starts Ray instances of its own, as the cluster tests do
def test_startup(capsys):
    """A trivial TorchTrainer and a genbench train, each a fresh process with its own Ray."""
    from benchmarks import startup

    assert startup.main(["--smoke"]) == 0
    [(header, rows)] = tables(capsys.readouterr().out)
    assert header[1:] == ["trivial TorchTrainer", "genbench train (ae)"]
    values = {row[0]: row[1:] for row in rows}
    for phase in ("imports", "start Ray (init_ray)", "fit() to the first step",
                  "launch to first step"):
        floor, genbench = (float(v) for v in values[phase])
        assert floor > 0 and genbench > 0, phase
    assert values["load the dataset"][0] == "—" and float(values["load the dataset"][1]) >= 0
    # the first step comes after fit() starts and before the process ends
    assert float(values["launch to first step"][1]) < float(values["launch to exit"][1])


@pytest.mark.slow
def test_bench_record_reads_a_training_runs_times_from_mlflow(ae_run, capsys):
    """The session's AE run (30 steps, a point every 10): its start-up, steps and tail."""
    from mlflow.tracking import MlflowClient

    from benchmarks import bench_record
    from pipeline.errors import ConfigError

    assert bench_record.main(["--tracking-uri", ae_run.uri,
                              "--experiment", ae_run.experiment]) == 0
    [(header, rows)] = tables(capsys.readouterr().out)
    assert header[0] == "run" and len(rows) == 1
    name, kind, executor, steps, start_up, first_step, step_one, span, tail, total = rows[0]
    run = MlflowClient(ae_run.uri).get_run(ae_run.run_id)
    assert (name, kind, executor, steps, first_step) == (run.info.run_name, "train",
                                                         "Ray Train", "30", "10")
    assert float(start_up) > 0 and float(span) > 0 and float(tail) >= 0
    # step 1 ends before the first point (step 10): its 9 steps before, at the run's pace
    assert 0 < float(step_one) < float(start_up)
    # the three parts are the run's whole span, as MLflow recorded it
    whole = (run.info.end_time - run.info.start_time) / 1000
    assert float(total) == pytest.approx(whole, abs=0.1)
    assert float(start_up) + float(span) + float(tail) == pytest.approx(whole, abs=0.3)
    with pytest.raises(ConfigError, match="no experiment 'nope'"):
        bench_record.main(["--tracking-uri", ae_run.uri, "--experiment", "nope"])
