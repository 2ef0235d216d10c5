"""`genbench bench`: its options and presets, the scaling section's numbers worked out by hand,
and one-line errors before anything starts. The tiny bench that runs the real stack with
--seeds 2 --workers 2 --storage-path (every run, the sweep, the scaling stage and the report):
tests/test_bench.py."""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from genbench.bench import PRESETS, load_preset
from genbench.cli import main, make_parser
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES, can, names
from testing.evalkit import TINY

GENBENCH = [sys.executable, "-m", "genbench"]
ROOT = Path(__file__).resolve().parents[1]


def timed_family() -> str:
    """A family with a validation metric (the scaling stage times it) and a sampler."""
    return next(f for f in names() if FAMILIES[f].SWEEP_METRIC and can(FAMILIES[f], "sample"))


def tiny_preset(path: Path, family: str) -> Path:
    size = {family: TINY.get(family, {})}
    train = {"batch_size": 16, "log_every": 2, "checkpoint_every": 4}
    preset = {
        "every_family": {"config": {**size, "train": {**train, "steps": 4}}, "n_fake": 20},
        "eval": {"n_real": 20, "extractors": ["domain"], "k": 2, "bpd_images": 20,
                 "probe_images": 200, "batch_size": 20},
        "sweep": {"model": family, "samples": 1, "steps": 4,
                  "config": {**size, "train": {"batch_size": 16}}},
        "scaling": {"model": family, "workers": [1],
                    "config": {**size, "train": {**train, "steps": 8, "eval_every": 4}}},
    }
    path.write_text(yaml.safe_dump(preset))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch, mlflow_uri):
    """A temp working dir, a private MLflow store and an empty GENBENCH_CACHE (these tests stop
    before anything is trained or evaluated: no domain classifier)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def test_gpu_without_a_gpu_is_one_line_before_anything_starts(tmp_path):
    """The real command: exit 2, one line on stderr, nothing on stdout, nothing created."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --gpu is allowed here")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
               GENBENCH_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    start = time.monotonic()
    proc = subprocess.run([*GENBENCH, "bench", "--gpu", "--workers", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("genbench: error: --gpu asked for but this machine has no GPU")
    assert proc.stdout == ""
    assert time.monotonic() - start < 60
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "reports").exists()
    if (tmp_path / "m.db").exists():  # the check may open the store; nothing is logged to it
        client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_help_lists_the_options_and_presets():
    parser = make_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    text = bench.format_help()
    for option in ("--gpu", "--workers", "--address", "--storage-path", "--families",
                   "--inception-weights", "--parallel"):
        assert option in text
    assert {"quick", "gpu", "full"} <= set(PRESETS)
    assert "gpu" in text and "H100/H200" in " ".join(text.split())


@pytest.mark.parametrize("name", ["quick", "gpu", "full"])
def test_presets_load_and_cover_every_family(name):
    """Every preset builds a valid config for every registered family, with and without the
    command line's flags, and its scaling section names a family with a validation metric."""
    from genbench import scaling
    from genbench.bench import flags_config

    preset = load_preset(name)
    for flags in ({}, flags_config(argparse.Namespace(workers=2, gpu=True,
                                                   storage_path="/nfs/x"))):
        for family in names():
            cfg = preset.config(family, "fashion-mnist", flags)
            if flags:
                assert (cfg.train.workers, cfg.train.gpu, cfg.train.storage_path) == \
                    (2, True, "/nfs/x")
        if preset.scaling:
            cfgs = scaling.configs(preset.scaling, "fashion-mnist", flags)
            assert {c.train.workers for c in cfgs} >= {1, 2}
            assert any(c.train.gpu for c in cfgs) == bool(flags)
            assert not all(c.train.gpu for c in cfgs)  # CPU is always measured


def test_gpu_preset_measures_what_the_issue_asks():
    """n_fake = n_real = 10,000 for every family, bits/dim on the whole test split, the sweep,
    and real epochs for every family."""
    preset = load_preset("gpu")
    assert preset.eval["n_real"] == 10000 and preset.eval.get("bpd_images") is None
    assert preset.sweep and preset.scaling
    for family in names():
        assert preset.n_fake(family) == 10000
        cfg = preset.config(family, "fashion-mnist")
        assert cfg.train.steps is None and cfg.train.epochs >= 1


@pytest.mark.parametrize("section, needle", [
    ({"model": "nope"}, "scaling.model 'nope' is not a registered family"),
    ({"workers": [1, 2]}, "scaling takes model (required)"),
    ({"model": "{timed}", "workers": [0]}, "scaling.workers must be a list of positive"),
    ({"model": "{timed}", "target": "low"}, "scaling.target must be a number"),
    ({"model": "{untimed}"}, "has no validation metric to time"),
])
def test_bad_scaling_section_is_one_line(tmp_path, section, needle):
    untimed = [f for f in names() if FAMILIES[f].SWEEP_METRIC is None]
    if section.get("model") == "{untimed}" and not untimed:
        pytest.skip("every registered family has a validation metric")
    fill = {"{timed}": timed_family(), "{untimed}": (untimed or [None])[0]}
    section = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in section.items()}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"scaling": section}))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_preset(str(path))


@pytest.mark.parametrize("workers, asked_cpus, parallel, expect", [
    (1, None, None, (3, 2, 1, 1)),    # 2 CPUs: two 1-CPU runs at once and one evaluation
    (2, None, None, (2, 1, 1, None)),  # a 2-worker run takes both: one run, one evaluation
    (1, 2, None, (2, 1, 1, None)),     # cpus_per_worker asked for: kept, so one run fits
    (1, None, 1, (1, 1, 1, None)),     # --parallel 1: one stage after another
    (1, None, 5, (5, 2, 3, 1)),        # more stages than runs fit: evaluations fill the rest
])
def test_concurrency_fits_the_runs_to_the_cluster(ray_local, workers, asked_cpus, parallel,
                                                  expect):
    from genbench.bench import concurrency
    from pipeline.cluster import resolve_resources
    from pipeline.config import Config

    assert ray_local.cluster_resources()["CPU"] == 2
    train = {"workers": workers, **({"cpus_per_worker": asked_cpus} if asked_cpus else {})}
    resolved = resolve_resources(Config.from_dict({"model": "vae", "train": train}))
    plan = concurrency(resolved, asked_cpus, parallel, n_runs=7)
    assert (plan.parallel, plan.ray_slots, plan.driver_slots, plan.cpus_per_worker) == expect
    assert plan.ray_slots * workers * (plan.cpus_per_worker or resolved.train.cpus_per_worker) <= 2


def test_workers_that_do_not_divide_a_batch_fail_before_anything_starts(env, capsys):
    family = timed_family()
    preset = tiny_preset(env / "tiny.yaml", family)
    code = main(["bench", "--preset", str(preset), "--families", family, "--workers", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "batch size 16 does not divide across 3 workers" in err[0]
    assert not (env / "ray_results").exists()



def log_scaling_run(client, exp: str, family: str, workers: int, start: float, points: list,
                    val: list, target: float | None = None) -> str:
    """A scaling run as genbench logs one: params, tags, images_per_s and the validation metric
    at the given (step, value, seconds) points; the run starts at `start` seconds."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {"genbench.kind": "scaling", "genbench.model": family,
            "genbench.scaling.device": "cpu", "hardware.cpu": "test CPU"}
    if target is not None:
        tags["genbench.scaling.target"] = str(target)
    run = client.create_run(exp, start_time=int(start * 1000),
                            tags={k: str(v) for k, v in tags.items()})
    rid = run.info.run_id
    params = {"train.workers": workers, "train.batch_size": 10, "train.total_steps": 40,
              "train.gpu": False, "train.cpus_per_worker": 2 // workers}
    metric = FAMILIES[family].SWEEP_METRIC
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric("images_per_s", v, int(t * 1000), s) for s, v, t in points]
                     + [Metric(metric, v, int(t * 1000), s) for s, v, t in val])
    client.set_terminated(rid, "FINISHED", end_time=int((points[-1][2] + 1) * 1000))
    return rid


@pytest.mark.parametrize("target", [None, 4.6])
def test_scaling_section_numbers_by_hand(tmp_path, target):
    """images/s from the first to the last logged step over MLflow timestamps, start-up from the
    run's start to one interval before the first point, time to target from there, speed-up
    over 1 worker: checked against numbers worked out by hand."""
    from report.render import write_report
    from report.scaling import collect_scaling

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("S")
    family = timed_family()
    t = 1_000_000.0
    # 1 worker: training starts at t+5 (step 10 at t+7 after 100 images at 50 img/s)
    one = log_scaling_run(client, exp, family, 1, t, [(10, 50.0, t + 7), (20, 40.0, t + 9.5),
                                                      (40, 50.0, t + 13)],
                          [(20, 5.0, t + 9.6), (40, 4.0, t + 13.5)], target)
    # 2 workers: run starts at t+100, training at t+108 (100 images at 100 img/s until t+109)
    two = log_scaling_run(client, exp, family, 2, t + 100, [(10, 100.0, t + 109),
                                                            (40, 100.0, t + 112)],
                          [(20, 4.5, t + 110.2), (40, 3.9, t + 112.2)], target)
    (section,) = collect_scaling(tracking_runs(client, exp), uri, with_images=True)
    first, second = section.runs
    assert (first.run_id, second.run_id) == (one, two)
    assert first.images_per_s == pytest.approx(300 / 6)      # steps 10..40 x 10 in 6 s
    assert second.images_per_s == pytest.approx(300 / 3)
    assert second.speedup == pytest.approx(2.0) and first.speedup == pytest.approx(1.0)
    assert first.start_up_s == pytest.approx(5.0, abs=0.01)
    assert second.start_up_s == pytest.approx(8.0, abs=0.01)
    if target is None:  # the best value both runs reached: 4.0 (run 1's best)
        assert section.target == pytest.approx(4.0)
        assert first.to_target_s == pytest.approx(8.5, abs=0.01)
        assert second.to_target_s == pytest.approx(4.2, abs=0.01)
    else:
        assert section.target == pytest.approx(4.6)
        assert first.to_target_s == pytest.approx(8.5, abs=0.01)
        assert second.to_target_s == pytest.approx(2.2, abs=0.01)
    assert second.to_target_total_s == pytest.approx(second.to_target_s + 8.0, abs=0.01)
    assert section.plot is not None and section.plot.png.startswith(b"\x89PNG")

    html = write_report("S", tmp_path / "r", uri=uri, quiet=True)
    md = html.with_name("report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| CPU |")]
    assert [r.split("|")[2].strip() for r in rows] == ["1", "2"]
    assert "2.00x" in rows[1] and "50" in rows[0] and "100" in rows[1]


def tracking_runs(client, exp):
    return client.search_runs([exp], order_by=["attributes.start_time DESC"])


def test_a_cheaper_domain_classifier_has_its_own_cache_slot(tmp_path, monkeypatch):
    """eval domain_epochs (the quick preset's): the classifier trained for fewer epochs is cached
    apart from the default one, never stands in for it, and its epochs are in the stamp."""
    from eval.domain_classifier import (DOMAIN_EPOCHS, cached_domain, domain_paths,
                                        domain_variant, train_and_cache_domain)
    from eval.extractors import domain_extractor

    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    assert domain_variant(None) == domain_variant(DOMAIN_EPOCHS) == ""
    assert domain_variant(2) == "e2" and domain_variant(0.5) == "e0.5"
    assert domain_paths("fashion-mnist", 32, "e2")[0] != domain_paths("fashion-mnist", 32)[0]
    train_and_cache_domain("fashion-mnist", epochs=1, max_images=300, width=4, quiet=True,
                           variant=domain_variant(1))
    assert cached_domain("fashion-mnist", 32) is None         # the default slot stays empty
    ext = domain_extractor("fashion-mnist", None, 32, train_if_missing=False, epochs=1)
    assert ext.protocol()["epochs"] == "1" and ext.protocol()["train_images"] == "300"
    assert ext.weights == domain_paths("fashion-mnist", 32, "e1")[0]
    with pytest.raises(ConfigError, match="no domain classifier cached"):
        domain_extractor("fashion-mnist", None, 32, train_if_missing=False)


def test_the_presets_order_sorts_the_runs_and_names_only_runs_the_bench_trains(tmp_path):
    """order: named runs first, in its order (a family's name covers each of its seeds); the
    unnamed keep theirs. The quick preset's order names every run it trains and nothing else, so
    a misspelt name cannot quietly fall back to the registry's order."""
    from genbench.bench import in_order, ood_runs

    jobs = [(n, n.split()[0], {}) for n in ("ae", "vae seed 0", "vae seed 1", "gan",
                                            "vae conditional")]
    got = [name for name, _, _ in in_order(jobs, ("vae conditional", "gan", "vae", "flow"))]
    assert got == ["vae conditional", "gan", "vae seed 0", "vae seed 1", "ae"]
    assert in_order(jobs, ()) == jobs

    from pipeline.models import is_built_in

    quick = load_preset("quick")
    built_in = [f for f in names() if is_built_in(f)]   # what `genbench bench` trains
    trained = set(built_in) | {name for name, _, _ in ood_runs(quick, built_in)}
    assert quick.order and set(quick.order) == trained

    bad = tmp_path / "bad-order.yaml"
    bad.write_text(yaml.safe_dump({"every_family": {}, "order": [{"vae": 1}]}))
    with pytest.raises(ConfigError, match="order must be a list of run names"):
        load_preset(str(bad))
    bad.write_text(yaml.safe_dump({"every_family": {}, "order": ["vae", "flwo"]}))
    with pytest.raises(ConfigError, match="order names 'flwo', not a registered family"):
        load_preset(str(bad))
