"""`genbench bench` prints its plan (stages, runs, estimated times) before it starts anything;
--dry-run stops there; a plan over bench_plan.CONFIRM_ABOVE_S needs --yes."""
import pytest

from genbench import bench_plan
from genbench.cli import main


@pytest.fixture
def nothing_starts(monkeypatch, mlflow_uri, workdir):
    """bench must not reach Ray: starting it (or asking for a GPU) fails the test. The full
    preset's nets are big: their timing is stubbed (the quick test below times real ones)."""
    import ray

    import pipeline.cluster

    def refuse(*args, **kwargs):
        raise AssertionError("bench started Ray")

    monkeypatch.setattr(pipeline.cluster, "init_ray", refuse)
    monkeypatch.setattr(pipeline.cluster, "require_gpu", refuse)
    monkeypatch.setattr(bench_plan, "image_seconds", lambda cfg, device: 1e-3)
    was_running = ray.is_initialized()
    yield mlflow_uri
    assert ray.is_initialized() == was_running
    db = workdir / "mlflow.db"
    if db.exists():  # the store may be created by the service check, but holds no runs
        from mlflow.tracking import MlflowClient
        client = MlflowClient(mlflow_uri)
        names = [e.name for e in client.search_experiments()]
        assert names == ["Default"], names
        assert not client.search_runs(["0"])


def test_dry_run_prints_the_plan_and_starts_nothing(nothing_starts, capsys):
    assert main(["bench", "--preset", "full", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: genbench bench --preset full")
    for stage in ("train vae", "eval vae", "train vae conditional", "eval flow without class 8", "sweep vae (32 trials)",
                  "scaling vae, 8 CPU workers", "report"):
        assert f"  {stage} " in out, stage
    assert "1 MLflow parent run + 32 trial runs" in out
    assert "total, one stage after another: ~" in out


def test_a_long_plan_needs_yes(nothing_starts, capsys):
    assert main(["bench", "--preset", "full"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("genbench: error: this bench would take ~")
    assert "--yes" in lines[0] and "--dry-run" in lines[0]


def test_the_quick_preset_runs_without_yes():
    """Timed for real on this machine: the quick preset stays under the threshold."""
    from genbench import scaling
    from genbench.bench import eval_options, load_preset, ood_runs
    from pipeline.config import Config, merge
    from pipeline.models import BUILT_IN

    preset = load_preset("quick")
    families = list(BUILT_IN)
    configs = {f: preset.config(f, "fashion-mnist") for f in families}
    extra = ood_runs(preset, families)
    for name, family, more in extra:
        configs[name] = Config.from_dict(merge(configs[family].to_dict(), more))
    sweep = Config.from_dict({"model": "vae", "train": {"steps": preset.sweep["steps"]}})
    plan = bench_plan.make_plan(preset, [(f, f, {}) for f in families] + extra, configs,
                                lambda family, more: eval_options(None, family, preset, more),
                                sweep, scaling.configs(preset.scaling, "fashion-mnist", {}))
    # train and eval each, the domain classifier, the sweep, 2 scaling runs, the report
    assert len(plan.stages) == 2 * len(configs) + 1 + 1 + 2 + 1
    assert [s.name for s in plan.stages].index("domain classifier") == len(configs)
    assert 5 * 60 < plan.seconds < bench_plan.CONFIRM_ABOVE_S
    bench_plan.confirm(plan, yes=False)  # no error



def test_the_domain_classifier_stage_costs_nothing_once_cached(tmp_path, monkeypatch):
    """A fresh machine trains it (its epochs' worth of time in the plan); a machine with it in
    the cache (here an untrained one, saved as a trained one is) only loads it."""
    from eval.domain_classifier import (DomainClassifier, domain_paths, domain_variant,
                                        save_domain_classifier)
    from pipeline.config import Config

    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    d = Config.from_dict({"model": "vae"}).data
    fresh = bench_plan.domain_stage(d, 2, "cpu")
    assert fresh.seconds == bench_plan.DOMAIN_EPOCH_S["cpu"] * 2 and "trained" in fresh.starts
    paths = domain_paths(d.dataset, d.image_size, domain_variant(2))
    paths[0].parent.mkdir(parents=True)
    save_domain_classifier(DomainClassifier(10, in_channels=1), {"epochs": 2}, *paths)
    cached = bench_plan.domain_stage(d, 2, "cpu")
    assert cached.seconds == 0 and "cached" in cached.starts
    assert bench_plan.domain_stage(d, None, "cpu").seconds > 0   # another slot: not cached
