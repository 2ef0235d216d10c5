"""`genbench eval --samples DIR`: a folder of anyone's samples scored under genbench's protocol,
and `--bootstrap B` confidence intervals."""
import pytest
import torch
from PIL import Image

from genbench.cli import main
from pipeline import tracking
from testing.evalkit import domain_cache, fmnist_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_REAL = "1000"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private MLflow store, the test domain classifier, a temp working directory."""
    base = tmp_path_factory.mktemp("eval-samples")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("GENBENCH_CACHE", str(domain_cache(tmp_path_factory.getbasetemp())))
    mp.chdir(base)
    yield base
    mp.undo()


def write_pngs(folder, images: torch.Tensor, mode: str = "L"):
    """uint8 (N, C, H, W) -> folder/00000.png ... (grey for C = 1, RGB for C = 3)."""
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        array = img[0].numpy() if mode == "L" else img.permute(1, 2, 0).numpy()
        Image.fromarray(array, mode).save(folder / f"{i:05d}.png")
    return folder


def external_run(experiment: str):
    runs = tracking.search_runs(tracking.find_experiment(experiment))
    [run] = [r for r in runs if r.data.tags.get("genbench.kind") == "external"]
    return run


def test_samples_folder_fid_equals_genbench_own_computation(env, capsys):
    """200 test images written as PNGs: the FID logged for the folder equals the FID genbench
    computes on the same images with the same extractor and the same reference subset."""
    from eval.extractors import get_extractor
    from eval.fidelity import extract_features, fid, kid
    from eval.run import subset

    test = fmnist_test()
    images = test.images[:200]
    folder = write_pngs(env / "my-samples", images)
    assert main(["eval", "--samples", str(folder), "--metrics", "fid,kid", "--n-real", N_REAL,
                 "--experiment", "ext", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = external_run("ext")
    assert run.data.tags["genbench.model"] == "external:my-samples"
    assert run.data.params["samples.images"] == "200"
    assert run.data.tags["eval.domain.n_fake"] == "200"
    assert run.data.tags["eval.domain.n_real"] == N_REAL
    assert run.data.tags["eval.domain.reference_split"] == "test"
    assert "fid_domain" in out

    ext = get_extractor("domain", "fashion-mnist", None, 32, torch.device("cpu"), quiet=True)
    own = extract_features(ext, images, 250, quiet=True)
    reference = extract_features(ext, subset(test, int(N_REAL), 0).images, 250, quiet=True)
    layer = ext.layers
    expected = fid(own[layer["fid"]], reference[layer["fid"]])
    assert abs(run.data.metrics["fid_domain"] - expected) < 1e-6
    assert run.data.metrics["kid_domain"] == pytest.approx(
        kid(own[layer["kid"]], reference[layer["kid"]], 200)[0], abs=1e-9)
    # a real subset of the test split against the test split: near the floor, far from noise
    assert expected < 3 * run.data.metrics["floor_fid_domain"] + 5

    # the report includes it as a row of its own, sample-quality columns only
    from report.render import write_report
    html = write_report("ext", env / "report", quiet=True).read_text()
    # its rows: one in the likelihood/training table, one per sample-quality protocol table
    rows = [part.split("</tr>", 1)[0]
            for part in html.split('data-family="external:my-samples"')[1:]]
    assert any(f'data-value="{run.data.metrics["fid_domain"]!r}"' in row for row in rows)
    assert any('data-key="bpd_test"' in row and ">n/a<" in row for row in rows)


@pytest.mark.parametrize("shape, mode, needles", [
    ((10, 1, 32, 32), "L", ["is 32x32", "28x28", "never resized"]),
    ((10, 3, 28, 28), "RGB", ["is colour (RGB)", "grey 28x28", "save the samples as grey"]),
])
def test_samples_of_the_wrong_size_or_mode_exit_2_with_one_line(env, tmp_path, capsys, shape,
                                                                 mode, needles):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator()
                           .manual_seed(0))
    folder = write_pngs(tmp_path / "bad", images, mode)
    assert main(["eval", "--samples", str(folder), "--experiment", "bad", "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genbench: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert tracking.find_experiment("bad") is None  # nothing logged


def test_empty_samples_folder_and_model_metrics_are_one_line(env, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--samples", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no PNG/JPEG images under" in capsys.readouterr().err
    folder = write_pngs(tmp_path / "ok", fmnist_test().images[:20])
    assert main(["eval", "--samples", str(folder), "--metrics", "fid,bpd", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only sample-quality metrics" in err


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n(env, capsys):
    from eval.extractors import get_extractor
    from eval.fidelity import bootstrap_intervals, extract_features

    test = fmnist_test()
    ext = get_extractor("domain", "fashion-mnist", None, 32, torch.device("cpu"), quiet=True)
    feats = extract_features(ext, test.images[:2000], 250, quiet=True)

    def interval(n):
        fake = {k: v[:n] for k, v in feats.items()}
        real = {k: v[1000:1000 + n] for k, v in feats.items()}
        out = bootstrap_intervals(fake, real, ext, ("fid", "kid"), min(n, 100), 30, seed=1)
        return out, fake, real

    small, fake, real = interval(200)
    from eval.fidelity import fid
    estimate = fid(fake[ext.layers["fid"]], real[ext.layers["fid"]])
    assert small["fid_domain_ci_low"] < estimate < small["fid_domain_ci_high"]
    assert small["kid_domain_ci_low"] < small["kid_domain_ci_high"]
    large, _, _ = interval(1000)
    width = {k: large[f"{k}_ci_high"] - large[f"{k}_ci_low"] for k in ("fid_domain",)}
    assert width["fid_domain"] < small["fid_domain_ci_high"] - small["fid_domain_ci_low"]
    assert interval(200)[0] == small  # seeded: the same interval again

    folder = write_pngs(env / "boot", test.images[:200])
    assert main(["eval", "--samples", str(folder), "--metrics", "fid", "--n-real", N_REAL,
                 "--bootstrap", "10", "--experiment", "boot", "--quiet"]) == 0
    run = external_run("boot")
    m = run.data.metrics
    assert m["fid_domain_ci_low"] < m["fid_domain"] < m["fid_domain_ci_high"]
    assert "10 resamples" in run.data.tags["eval.domain.bootstrap"]


def test_decompression_bomb_among_the_samples_is_one_line(tmp_path, mlflow_uri, capsys):
    """A PNG that declares 20000x20000 pixels among the samples: refused from its header with
    the file and PIL's limit, before anything is decoded or logged."""
    from testing.evalkit import decompression_bomb

    folder = write_pngs(tmp_path / "samples", fmnist_test().images[:12])
    bomb = decompression_bomb(folder / "00005.png")
    assert main(["eval", "--samples", str(folder), "--experiment", "bomb", "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(bomb) in lines[0] and "MAX_IMAGE_PIXELS" in lines[0]
    assert tracking.find_experiment("bomb") is None
