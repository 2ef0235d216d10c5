"""--metrics cas,intra_fid (eval/metrics/cas.py): intra-class FID is FID per class averaged, CAS
tells real labels from shuffled ones, and `genbench eval` logs both for a conditional run (a real
tiny conditional VAE trained by `genbench train`) and stamps "not applicable" on any other."""
from __future__ import annotations

import time

import pytest
import torch

from eval.fidelity import fid
from eval.metrics.cas import (balanced_labels, balanced_subset, classifier_accuracy, intra_fid,
                              trained_classes)
from genbench.cli import main
from pipeline import tracking
from pipeline.data import ImageData, load_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_intra_fid_is_the_mean_of_each_classes_fid():
    gen = torch.Generator().manual_seed(0)
    y_fake, y_real = balanced_labels([0, 1, 2], 20), balanced_labels([0, 1, 2], 30)
    f_fake = torch.randn(60, 4, generator=gen) + y_fake[:, None].float()   # a shift per class
    f_real = torch.randn(90, 4, generator=gen) * 1.5
    mean, per = intra_fid(f_fake, y_fake, f_real, y_real, [0, 1, 2])
    by_hand = [fid(f_fake[y_fake == c], f_real[y_real == c]) for c in (0, 1, 2)]
    assert per == pytest.approx(by_hand) and mean == pytest.approx(sum(by_hand) / 3)
    assert per[0] < per[1] < per[2]           # the further a class is shifted, the worse
    # fakes that are the real images: every class's FID is 0
    assert intra_fid(f_real, y_real, f_real, y_real, [0, 1, 2])[1] == pytest.approx([0] * 3,
                                                                                    abs=1e-3)


def test_balanced_labels_cycle_through_the_classes():
    labels = balanced_labels([0, 2, 5], 3)
    assert labels.tolist() == [0, 2, 5] * 3
    data = ImageData(torch.zeros(12, 1, 2, 2, dtype=torch.uint8),
                     torch.tensor([0] * 6 + [2] * 6), 10)
    assert trained_classes(data) == [0, 2]    # a class the run never saw is never asked for
    assert torch.bincount(balanced_subset(data, [0, 2], 4, 0).labels).tolist() == [4, 0, 4]


@pytest.fixture(scope="module")
def fmnist():
    train = load_split("fashion-mnist", "train", None, 0.1, 0, 32)
    test = load_split("fashion-mnist", "test", None, 0.1, 0, 32)
    return train, balanced_subset(test, list(range(10)), 200, 0)


def test_cas_of_real_labelled_images_matches_cas_real_and_shuffled_labels_are_chance(fmnist):
    train, test = fmnist
    classes = list(range(10))
    real = balanced_subset(train, classes, 100, seed=0)     # cas_real's set
    samples = balanced_subset(train, classes, 100, seed=1)  # "samples": other real images
    shuffled = ImageData(samples.images, samples.labels[torch.randperm(
        len(samples), generator=torch.Generator().manual_seed(0))], samples.num_classes)
    ceiling = classifier_accuracy(real, test)
    cas = classifier_accuracy(samples, test)
    chance = classifier_accuracy(shuffled, test)
    print(f"cas_real {ceiling:.3f}, cas {cas:.3f}, shuffled {chance:.3f}")
    assert ceiling > 0.5 and abs(cas - ceiling) < 0.1
    assert chance < 0.25                         # 10 classes: chance is 0.1


@pytest.fixture(scope="module")
def cas_env(tmp_path_factory, domain_classifier):
    """A private MLflow store, the session's test domain classifier, a temp working directory."""
    base = tmp_path_factory.mktemp("cas")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("GENBENCH_CACHE", str(domain_classifier))
    mp.chdir(base)
    yield base
    mp.undo()


@pytest.fixture(scope="module")
def conditional_vae(cas_env, ray_local, fast_sets) -> str:
    args = ["train", "--model", "vae", "--steps", "60", "--experiment", "cas", *fast_sets("vae"),
            "--set", "train.conditional=true", "--set", "train.checkpoint_every=1000"]
    assert main(args) == 0
    c = tracking.client()
    [run] = c.search_runs([c.get_experiment_by_name("cas").experiment_id])
    return run.info.run_id


EVAL = ["--metrics", "cas,intra_fid", "--n-fake", "1000", "--n-real", "2000", "--quiet"]


@pytest.mark.slow
def test_a_conditional_run_logs_cas_and_intra_fid_and_the_report_shows_them(
        conditional_vae, cas_env, capsys):
    from report.render import write_report
    from test_report import parse

    t0 = time.time()
    assert main(["eval", "--run-id", conditional_vae, *EVAL]) == 0
    seconds = time.time() - t0
    out = capsys.readouterr().out
    run = tracking.get_run(conditional_vae)
    m, tags = run.data.metrics, run.data.tags
    print(f"eval --metrics cas,intra_fid in {seconds:.1f}s: cas {m['cas']:.3f}, cas_real "
          f"{m['cas_real']:.3f}, intra_fid_domain {m['intra_fid_domain']:.2f} (floor "
          f"{m['floor_intra_fid_domain']:.2f})")
    assert 0 <= m["cas"] <= 1 and 0.5 < m["cas_real"] <= 1 and "cas_real" in out
    assert m["intra_fid_domain"] > m["floor_intra_fid_domain"] > 0
    assert tags["eval.cas.per_class"] == "100" and tags["eval.cas.epochs"] == "5"
    assert tags["eval.cas.seed"] == "0" and tags["eval.cas.test_images"] == "10000"
    assert tags["eval.domain.n_fake"] == "1000" and tags["eval.domain.n_real"] == "2000"
    assert tags["eval.domain.intra_fid_per_class"].startswith("100 samples vs")
    # the evaluation's own record holds the same numbers
    record = tracking.get_run(tags["genbench.eval_record"])
    assert {"cas", "cas_real", "intra_fid_domain"} <= set(record.data.metrics)

    html = write_report("cas", cas_env / "report", quiet=True).read_text()
    cells = {c["key"]: c for c in parse(html).cells}
    for key in ("cas", "cas_real", "intra_fid_domain"):
        assert float(cells[key]["value"]) == m[key], key
    assert "CAS ↑" in html and "intra-class FID ↓" in html
    td = html.split('data-key="cas"', 1)[1].split(">", 1)[0]
    assert "per_class=100" in td and "epochs=5" in td
    # the section of conditional runs: there even where a family's unconditional run takes the
    # main table (the quick bench's conditional VAE)
    from report.data import fmt
    section = html.split('id="conditional-table"', 1)[1].split("</table>", 1)[0]
    assert f'data-run="{conditional_vae}"' in section
    for key in ("cas", "cas_real", "intra_fid_domain"):
        assert fmt(m[key]) in section, key
    assert "per class 100" in section


@pytest.mark.slow
@pytest.mark.uses_family("vae")
def test_an_unconditional_run_is_stamped_not_applicable(family_run, domain_classifier,
                                                        monkeypatch):
    run = family_run("vae")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    assert main(["eval", "--run-id", run.run_id, *EVAL]) == 0
    record = tracking.get_run(tracking.get_run(run.run_id).data.tags["genbench.eval_record"])
    for name in ("cas", "intra_fid"):
        assert record.data.params[f"eval.{name}"].startswith("not applicable: needs a "
                                                             "conditional model")
    assert not {"cas", "cas_real", "intra_fid_domain"} & set(record.data.metrics)
