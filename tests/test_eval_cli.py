"""`genbench eval` end to end on runs made by `genbench train` (real Ray, real MLflow)."""
import re

import pytest
import torch

from pipeline import tracking
from genbench.cli import main
from testing.evalkit import TINY, save_checkpoint, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models, busy cores

FIDELITY_KEYS = {"fid_domain", "is_domain", "kid_domain", "precision_domain", "recall_domain",
                 "floor_fid_domain", "floor_is_domain", "floor_kid_domain",
                 "floor_precision_domain", "floor_recall_domain"}
EXPECTED = {"vae": FIDELITY_KEYS | {"bpd_test", "probe_accuracy"},
            "gan": FIDELITY_KEYS,
            "pixelcnn": FIDELITY_KEYS | {"bpd_test"},
            "ae": {"mse_test", "psnr_test", "probe_accuracy"}}
SMALL_EVAL = ["--bpd-images", "300", "--probe-images", "2000", "--k", "2", "--quiet"]
N_FAKE = {"pixelcnn": 64}  # PixelCNN sampling: H * W * C sequential steps


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private MLflow store, a temp working directory, and an empty GENBENCH_CACHE: a test
    that needs the domain classifier asks for `classifier`; any other never trains one."""
    base = tmp_path_factory.mktemp("eval-cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("GENBENCH_CACHE", str(base / "empty-cache"))
    mp.chdir(base)
    yield base
    mp.undo()


@pytest.fixture
def classifier(domain_classifier, monkeypatch):
    """The session's test domain classifier, for the tests that compute FID/IS/KID/PR."""
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))


@pytest.fixture
def trained(env, family_run, monkeypatch):
    """trained("vae") -> the session's vae run id (`genbench train --workers 2 --steps 30`);
    eval then reads and logs into the session's store."""
    def get(family: str) -> str:
        run = family_run(family)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
        return run.run_id
    return get


def train_args(family: str) -> list[str]:
    sets = [f"{family}.{k}={v}" for k, v in TINY[family].items()]
    sets += ["train.batch_size=16", "train.log_every=2", "train.checkpoint_every=2"]
    return ["train", "--model", family, "--steps", "2", "--experiment", "eval-cli",
            *[x for s in sets for x in ("--set", s)]]


def latest_run_id() -> str:
    c = tracking.client()
    exp = c.get_experiment_by_name("eval-cli")
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                         max_results=1)[0].info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vae", "gan", "pixelcnn", "ae"])
def test_eval_of_a_trained_run_logs_metrics_and_protocol(family, trained, classifier, capsys):
    run_id = trained(family)
    n = str(N_FAKE.get(family, 200))
    assert main(["eval", "--run-id", run_id, "--n-fake", n, "--n-real", n, *SMALL_EVAL]) == 0
    out = capsys.readouterr().out
    run = tracking.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    assert EXPECTED[family] <= set(metrics), EXPECTED[family] - set(metrics)
    assert run.data.params["model"] == family   # the same run that training made
    for key in EXPECTED[family] - {k for k in EXPECTED[family] if k.startswith("floor_")}:
        assert key in out                        # the printed table (floors: a column)
    if family == "ae":
        assert not any(k.startswith(("fid", "is_", "kid")) for k in metrics)
        assert tags["eval.fidelity"].startswith("not applicable")
    else:
        protocol = {"eval.domain.n_fake": n, "eval.domain.n_real": n,
                    "eval.domain.reference_split": "test", "eval.domain.kid_subset_size": n,
                    "eval.seed": "0", "eval.image_shape": "1x28x28"}
        assert {k: tags.get(k) for k in protocol} == protocol
        assert re.fullmatch(r"[0-9a-f]{64}", tags["eval.domain.weights_sha256"])
        for key in ("eval.domain.resize", "eval.domain.input", "eval.versions.torch",
                    "eval.versions.torch_fidelity", "eval.domain.test_accuracy"):
            assert tags.get(key), key
        assert f"KID subset size lowered from 1000 to {n}" in out
        shots = tracking.list_artifacts(run_id, tags["eval.artifacts"])
        assert f"{tags['eval.artifacts']}/samples.png" in shots
    if family == "gan":
        assert "bpd_test" not in metrics
        assert tags["eval.bpd"] == "not applicable: a GAN has no likelihood"
        assert "bpd not applicable" in out
    if family in ("vae", "pixelcnn"):
        assert 0 < metrics["bpd_test"] < 9
        assert tags["eval.bpd.images"] == "300" and tags["eval.bpd.split"] == "test"
        assert tags["eval.bpd.k"] == ("2" if family == "vae" else "1")
    if family in ("vae", "ae"):
        assert 0.1 < metrics["probe_accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.uses_family("pixelcnn")
def test_eval_with_two_ray_workers_gives_the_same_bits_per_dim(trained):
    run_id = trained("pixelcnn")
    bpd = []
    for workers in ("1", "2"):
        assert main(["eval", "--run-id", run_id, "--metrics", "bpd", "--bpd-images", "300",
                     "--batch-size", "50", "--workers", workers, "--quiet"]) == 0
        bpd.append(tracking.get_run(run_id).data.metrics["bpd_test"])
    assert bpd[1] == pytest.approx(bpd[0], rel=1e-6)


@pytest.mark.slow
def test_train_with_eval_evaluates_the_new_run(env, classifier, ray_local, capsys):
    assert main(train_args("gan") + ["--eval", "--eval-n", "120"]) == 0
    out = capsys.readouterr().out
    metrics = tracking.get_run(latest_run_id()).data.metrics
    assert FIDELITY_KEYS <= set(metrics)
    assert "fid_domain" in out and "bpd not applicable" in out


def test_inception_offline_without_weights_is_one_line_naming_the_flag(env, tmp_path,
                                                                       monkeypatch, capsys):
    cfg, nets, opts = tiny_model("gan")
    save_checkpoint(tmp_path / "ck", cfg, nets, opts)
    monkeypatch.setenv("GENBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))   # no cached weights
    monkeypatch.delenv("GENBENCH_INCEPTION_WEIGHTS", raising=False)
    code = main(["eval", "--checkpoint", str(tmp_path / "ck"), "--extractor", "inception"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--inception-weights" in err
    # a file that is not torch-fidelity's weights is refused by its sha256
    fake = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    fake.write_bytes(b"not the weights")
    code = main(["eval", "--checkpoint", str(tmp_path / "ck"), "--extractor", "inception",
                 "--inception-weights", str(fake)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "sha256" in err


def test_bad_eval_input_is_one_line_and_exit_2(env, tmp_path, capsys):
    cfg, nets, opts = tiny_model("vae")
    save_checkpoint(tmp_path / "ck", cfg, nets, opts)
    cases = [(["eval"], "--run-id"),
             (["eval", "--run-id", "nope"], "no MLflow run"),
             (["eval", "--checkpoint", str(tmp_path / "missing")], "no checkpoint"),
             (["eval", "--checkpoint", str(tmp_path / "ck"), "--metrics", "fid,bogus"],
              "unknown metric"),
             (["eval", "--checkpoint", str(tmp_path / "ck"), "--metrics", "kid", "--n-fake",
               "50", "--kid-subset-size", "100"], "KID needs at least kid_subset_size=100"),
             (["eval", "--checkpoint", str(tmp_path / "ck"), "--metrics", "fid", "--n-fake",
               "5"], "at least 10 images per set")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert not (env / "empty-cache").exists()   # refused before any classifier was trained


def test_eval_of_a_checkpoint_without_its_run_logs_into_a_new_eval_run(env, tmp_path, capsys):
    cfg, nets, opts = tiny_model("pixelcnn")
    save_checkpoint(tmp_path / "ck", cfg, nets, opts, run_id="elsewhere")
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--metrics", "bpd",
                 "--bpd-images", "100", "--quiet"]) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)
    run = tracking.get_run(run_id)
    assert run.data.tags["genbench.kind"] == "eval" and "bpd_test" in run.data.metrics
    assert "not in" in out   # the note that says why a new run was made


def image_folder_with_counts(root, counts: dict[str, dict[str, int]], size: int = 16) -> str:
    """An ImageFolder dataset with the given images per split and class (dark/light PNGs)."""
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(0)
    for split, per_class in counts.items():
        for c, (name, n) in enumerate(per_class.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = gen.integers(0, 128, (size, size, 3)) + 127 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return str(root)


def test_conditional_samples_follow_the_train_split_class_frequencies(tmp_path, monkeypatch,
                                                                       capsys):
    """A 9:1 train split and a 1:1 test split: eval draws the labels of a conditional model's
    samples from the train split's class frequencies (not the test split's, not uniform)."""
    from pipeline.config import Config
    from pipeline.data import load_split
    from pipeline.loop import build_nets

    dataset = image_folder_with_counts(tmp_path / "images", {
        "train": {"dark": 36, "light": 4}, "test": {"dark": 6, "light": 6}})
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    assert main(["eval", "train-classifier", "--dataset", dataset, "--image-size", "16",
                 "--epochs", "1", "--quiet"]) == 0
    cfg = Config.from_dict({"model": "gan", "gan": TINY["gan"], "train": {"conditional": True},
                            "data": {"dataset": dataset, "image_size": 16}})
    train = load_split(dataset, "train", None, cfg.data.val_fraction, cfg.data.split_seed, 16)
    nets, opts = build_nets(cfg, train, torch.device("cpu"), 1)
    save_checkpoint(tmp_path / "ck", cfg, nets, opts)
    n = 400
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--metrics", "fid",
                 "--n-fake", str(n), "--n-real", "12", "--quiet"]) == 0
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", capsys.readouterr().out).group(1)
    counts = [int(c) for c in tracking.get_run(run_id).data.tags["eval.sample_label_counts"]
              .split(",")]
    p_dark = train.class_frequencies()[0].item()            # ~0.9 after the val cut
    assert sum(counts) == n and p_dark > 0.85
    sd = (n * p_dark * (1 - p_dark)) ** 0.5
    assert abs(counts[0] - n * p_dark) < 4 * sd, (counts, p_dark)   # 1:1 would be 200
