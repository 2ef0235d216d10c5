"""`genbench bench` end to end, in one run of the command (each bench costs several Ray Train
runs): `--seeds 2` trains each family twice and the report shows mean ± std over the seeds and
each seed's value; `--workers 2` makes every training run and each sweep trial a 2-rank DDP run;
the scaling stage adds 2 to the preset's [1]; `--storage-path` holds the checkpoints; the report
has the scaling table and plot built from those runs' MLflow metrics. The quick preset is shrunk
to two tiny families so this runs in minutes on 2 cores; everything else (Ray Train, Ray Tune,
eval, MLflow in a private sqlite store, the report) is the real thing, on Fashion-MNIST.
The options, presets and one-line errors of `genbench bench`: tests/test_bench_workers.py."""
import re
import statistics

import pytest
import yaml
from mlflow.tracking import MlflowClient

from genbench.cli import main
from pipeline.models import FAMILIES as REGISTRY
from testing.evalkit import TINY, domain_cache
from test_bench_workers import timed_family

pytestmark = pytest.mark.slow

FAMILIES = ("vae", "gan")


@pytest.fixture
def tiny_quick_preset(tmp_path):
    """The quick preset's shape, with tiny nets, a few steps and small n; a 1-trial sweep and a
    scaling stage of the family that has a validation metric to time."""
    timed = timed_family()
    size = {timed: TINY.get(timed, {})}
    train = {"batch_size": 16, "log_every": 2, "checkpoint_every": 4}
    preset = {
        "every_family": {"config": {"train": {**train, "steps": 4}}, "n_fake": 100},
        "families": {f: {"config": {f: TINY[f]}} for f in FAMILIES},
        "eval": {"n_real": 100, "extractors": ["domain"], "k": 1, "bpd_images": 100,
                 "probe_images": 500, "bootstrap": 20, "bootstrap_metrics": ["fid"]},
        "sweep": {"model": timed, "samples": 1, "steps": 2,  # a trial reports every step
                  "config": {**size, "train": {"batch_size": 16}}},
        "scaling": {"model": timed, "workers": [1],
                    "config": {**size, "train": {**train, "steps": 8, "eval_every": 4}}},
    }
    path = tmp_path / "tiny-quick.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def test_bench_with_two_seeds_and_two_workers(tiny_quick_preset, ray_local, workdir, mlflow_uri,
                                              monkeypatch, tmp_path_factory, capsys):
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_cache(tmp_path_factory.getbasetemp())))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage = workdir / "shared"
    assert main(["bench", "--preset", str(tiny_quick_preset), "--families", ",".join(FAMILIES),
                 "--seeds", "2", "--workers", "2", "--storage-path", str(storage),
                 "--experiment", "seeds"]) == 0

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("seeds").experiment_id],
                              max_results=100)
    by_kind = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("genbench.kind"), []).append(r)

    # --seeds 2: each family trained with seeds 0 and 1, named after them
    trained = by_kind["train"]
    by_family = {f: sorted((r for r in trained if r.data.tags["genbench.model"] == f),
                           key=lambda r: r.data.params["train.seed"]) for f in FAMILIES}
    for family, family_runs in by_family.items():
        assert [r.data.params["train.seed"] for r in family_runs] == ["0", "1"]
        assert [r.info.run_name for r in family_runs] == [
            f"{family}-fashion-mnist-seed0", f"{family}-fashion-mnist-seed1"]
    assert len(trained) == 2 * len(FAMILIES)

    # --workers 2 and --storage-path: every training run is 2-rank and keeps its checkpoints there
    for r in trained:
        assert r.data.params["train.workers"] == "2"
        assert {"genbench.node.rank0", "genbench.node.rank1"} <= set(r.data.tags)
        assert r.data.tags["genbench.ray_run_dir"].startswith(str(storage))
        assert any(k.startswith("fid_domain") for k in r.data.metrics)  # evaluated

    # the sweep: its trials are 2-worker runs too, under --storage-path
    (parent,) = by_kind["tune"]
    assert parent.data.params["tune.workers"] == "2"
    assert parent.data.tags["genbench.tune_path"].startswith(str(storage))
    trials = by_kind["tune-trial"]
    assert trials and all(t.data.params["train.workers"] == "2" for t in trials)

    # the scaling stage: the preset's 1 worker and --workers' 2
    timed = timed_family()
    scaling = sorted(by_kind["scaling"], key=lambda r: r.data.params["train.workers"])
    assert [r.data.params["train.workers"] for r in scaling] == ["1", "2"]
    for r in scaling:
        assert r.info.status == "FINISHED"
        assert r.data.tags["genbench.scaling.device"] == "cpu"
        assert r.data.params["train.total_steps"] == "8"
        assert REGISTRY[timed].SWEEP_METRIC in r.data.metrics
    (report,) = by_kind["report"]

    # stages at once (genbench/stage_pool.py): with --workers 2 on 2 CPUs one training run fits
    # at a time, and an evaluation runs beside it: some evaluation overlaps another job's training
    def span(r):
        return r.info.start_time, r.info.end_time

    def overlap(a, b):
        return span(a)[0] < span(b)[1] and span(b)[0] < span(a)[1]

    evals = by_kind["evaluation"]
    assert len(evals) == len(trained)
    assert any(overlap(e, t) for e in evals for t in trained
               if e.data.tags["mlflow.parentRunId"] != t.info.run_id), \
        [(r.info.run_name, *span(r)) for r in trained + evals]
    for i, a in enumerate(trained):          # ...and never two training runs on the 2 CPUs
        assert not any(overlap(a, b) for b in trained[i + 1:])
    err = capsys.readouterr().err
    assert "1 training run(s) at once" in err and "stage timeline" in err
    assert len([line for line in err.splitlines() if ": done in " in line]) == \
        len(trained) * 2 + 1 + 1 + 2 + 1  # train and eval each, the domain classifier (before
    # the evaluations, beside the first training runs), the sweep, 2 scaling, the report
    assert re.search(r"^\[\d+/\d+\] domain classifier  \(0\.0 min elapsed\)", err, re.M)

    # the results table: mean ± std over the seeds
    html = (workdir / "reports" / "seeds" / "report.html").read_text()
    # (one table for likelihood and training, one per sample-quality protocol)
    results = "".join(part.split("</table>", 1)[0]
                      for part in html.split('id="results-table')[1:])
    for family, family_runs in by_family.items():
        rows = " ".join(re.findall(rf'<tr data-family="{family}"[^>]*>(.*?)</tr>', results, re.S))
        for key in ("fid_domain", "kid_domain") + (("bpd_test",) if family == "vae" else ()):
            values = [r.data.metrics[key] for r in family_runs]
            cell = re.search(rf'data-key="{key}"[^>]*data-value="([^"]+)"[^>]*>([^<]*)<',
                             rows).groups()
            assert float(cell[0]) == pytest.approx(statistics.fmean(values)), (family, key)
            assert "(2 seeds)" in cell[1] and " ± " in cell[1], (family, key, cell)
            assert f"{statistics.stdev(values):.2g}" in cell[1]
    # eval.bootstrap: the families' FID compared pair by pair, ties marked
    significance = html.split('id="significance"', 1)[1].split("</table>", 1)[0]
    assert significance.count("data-pair=") >= 1 and "ranks " in significance
    # each seed's own value, in the seeds table
    seeds_table = html.split('id="seeds-table"', 1)[1].split("</table>", 1)[0]
    for family, family_runs in by_family.items():
        for r in family_runs:
            row = re.search(rf'<tr data-family="{family}" data-seed="{r.data.params["train.seed"]}"'
                            rf'[^>]*>(.*?)</tr>', seeds_table, re.S).group(1)
            value = re.search(r'data-key="fid_domain"[^>]*data-value="([^"]+)"', row).group(1)
            assert float(value) == r.data.metrics["fid_domain"]
    md = (workdir / "reports" / "seeds" / "report.md").read_text()
    assert "### Each seed" in md and "(2 seeds)" in md

    # the scaling section, from the scaling runs' MLflow metrics
    section = md.split("## Scaling with workers")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| CPU |")]
    assert len(rows) == 2, section
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[1] for c in cells] == ["1", "2"]
    assert all(c[4] not in ("—", "") for c in cells)          # images/s measured
    assert cells[0][5] == "1.00x"                              # speed-up over itself
    assert f"scaling_{timed}.png" in section
    assert (workdir / "reports" / "seeds" / "images" / f"scaling_{timed}.png").is_file()
    assert 'id="scaling"' in html and html.count('data-device="cpu"') == 2
