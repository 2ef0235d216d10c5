"""FID / IS / KID / precision-recall: self-distance, agreement with torch-fidelity, IS of real
data, KID's sample-size check, and the domain extractor's cache."""
import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity

from eval import fidelity
from eval.domain_classifier import (cached_domain, domain_paths, to_rgb_uint8,
                                    train_and_cache_domain)
from eval.extractors import DOMAIN_REGISTRY_NAME, domain_extractor
from eval.fidelity import extract_features, fidelity_metrics
from genbench.cli import main
from pipeline.errors import ConfigError
from testing.evalkit import domain_cache, fmnist_test, image_folder


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    cache = domain_cache(tmp_path_factory.getbasetemp())
    mp = pytest.MonkeyPatch()
    mp.setenv("GENBENCH_CACHE", str(cache))
    yield domain_extractor("fashion-mnist", None, 32, train_if_missing=False, quiet=True)
    mp.undo()


@pytest.fixture(scope="module")
def test_images():
    return fmnist_test()


class UInt8Images(torch.utils.data.Dataset):
    """What torch-fidelity's own input pipeline reads: one uint8 (3, H, W) tensor per item."""

    def __init__(self, images):
        self.images = to_rgb_uint8(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_fid_of_a_set_against_itself_is_zero(extractor, test_images):
    feats = extract_features(extractor, test_images.images[:600], quiet=True)["features"]
    assert abs(fidelity.fid(feats, feats)) < 1e-6
    # two halves of the same distribution: small but not zero; a shifted set: far larger
    halves = fidelity.fid(feats[:300], feats[300:])
    assert halves > 1e-4
    dark = extract_features(extractor, test_images.images[:300] // 4, quiet=True)["features"]
    assert fidelity.fid(dark, feats[300:]) > 5 * halves


def test_metrics_agree_with_torch_fidelity_on_the_same_images(extractor, test_images):
    # "generated": 400 test images with the brightness halved (a real, nonzero distance)
    fake = test_images.images[:400] // 2 + 40
    real = test_images.images[400:800]
    ours = fidelity_metrics(extract_features(extractor, fake, 100, quiet=True),
                            extract_features(extractor, real, 100, quiet=True),
                            extractor, fidelity.FIDELITY_METRICS, kid_subset_size=100)
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(fake), input2=UInt8Images(real), cuda=False, batch_size=100,
        isc=True, fid=True, kid=True, prc=True, feature_extractor=DOMAIN_REGISTRY_NAME,
        feature_extractor_weights_path=str(extractor.weights), kid_subset_size=100,
        cache=False, save_cpu_ram=True, verbose=False)
    pairs = {"fid_domain": "frechet_inception_distance", "is_domain": "inception_score_mean",
             "is_domain_std": "inception_score_std",
             "kid_domain": "kernel_inception_distance_mean",
             "kid_domain_std": "kernel_inception_distance_std",
             "precision_domain": "precision", "recall_domain": "recall"}
    assert set(ours) == set(pairs) | {"density_domain", "coverage_domain"}
    for key, ref in pairs.items():
        assert ours[key] == pytest.approx(theirs[ref], rel=1e-6, abs=1e-12), key
    assert ours["fid_domain"] > 1.0 and ours["kid_domain"] > 0.0
    # density/coverage (torch-fidelity has none): the reference implementation, prdc, on the
    # same FID features with the same k
    from prdc import compute_prdc
    f_fake = extract_features(extractor, fake, 100, quiet=True)[extractor.layers["fid"]]
    f_real = extract_features(extractor, real, 100, quiet=True)[extractor.layers["fid"]]
    ref = compute_prdc(real_features=f_real.double().numpy(), fake_features=f_fake.double().numpy(),
                       nearest_k=fidelity.DC_NEIGHBORHOOD)
    assert ours["density_domain"] == pytest.approx(ref["density"], abs=1e-6)
    assert ours["coverage_domain"] == pytest.approx(ref["coverage"], abs=1e-6)
    assert 0 < ours["coverage_domain"] < 1


def test_metrics_match_textbook_formulas_on_the_same_features(extractor, test_images):
    f = extract_features(extractor, test_images.images[:500], quiet=True)
    g = extract_features(extractor, test_images.images[500:1000] // 2, quiet=True)
    x, y = f["features"].double().numpy(), g["features"].double().numpy()
    # FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's matrix square root
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU units make the covariances singular
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert fidelity.fid(f["features"], g["features"]) == pytest.approx(expected, rel=1e-4)
    # IS = exp(E_x KL(p(y|x) || p(y))) on one split (no shuffling needed)
    logits = f["logits"].double()
    p, logp = logits.softmax(1), logits.log_softmax(1)
    kl = (p * (logp - p.mean(0, keepdim=True).log())).sum(1).mean()
    assert fidelity.inception_score(f["logits"], splits=1)[0] == pytest.approx(
        math.exp(kl.item()), rel=1e-9)
    # KID with one subset covering both sets: unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3
    n, d = 200, x.shape[1]
    a, b = x[:n], y[:n]
    kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) \
        - 2 * kxy.sum() / n ** 2
    kid, _ = fidelity.kid(f["features"][:n], g["features"][:n], subset_size=n, subsets=1)
    assert kid == pytest.approx(mmd, rel=1e-4)  # float32 features in torch-fidelity


def test_inception_score_of_real_test_data_is_close_to_the_number_of_classes(extractor,
                                                                              test_images):
    """IS = exp(E KL(p(y|x) || p(y))) counts the classes the classifier sees confidently. The
    session's test classifier is brief (~81% accuracy); the cached one (91%) scores 8.0 on all
    10 classes, 3.2 on the three below, 1.07 on trousers alone."""
    x, y = test_images.images[:4000], test_images.labels[:4000]
    logits = extract_features(extractor, x, quiet=True)["logits"]

    def score(classes=None):
        keep = torch.ones_like(y, dtype=torch.bool) if classes is None else \
            torch.isin(y, torch.tensor(classes))
        return fidelity.inception_score(logits[keep])[0]

    k = test_images.num_classes
    one, three, everything = score([1]), score([1, 8, 9]), score()  # trouser; + bag, ankle boot
    assert one < 1.5
    assert 2.5 < three < 4.0
    assert 0.5 * k < everything <= k
    assert one < three < everything


def test_kid_with_fewer_samples_than_the_subset_size_says_so():
    a, b = torch.randn(50, 16), torch.randn(80, 16)
    with pytest.raises(ConfigError, match=r"KID needs at least kid_subset_size=100 samples in "
                       r"each set, got 50 generated and 80 real"):
        fidelity.kid(a, b, subset_size=100)
    assert math.isfinite(fidelity.kid(a, b, subset_size=50)[0])


def test_metric_names_carry_the_extractor(extractor, test_images):
    feats = extract_features(extractor, test_images.images[:120], quiet=True)
    out = fidelity_metrics(feats, feats, extractor, ("fid", "is"), prefix="floor_")
    assert set(out) == {"floor_fid_domain", "floor_is_domain", "floor_is_domain_std"}


def test_grey_images_become_three_identical_uint8_channels():
    grey = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    rgb = to_rgb_uint8(grey)
    assert rgb.shape == (4, 3, 8, 8) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, 2], grey[:, 0])
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_uint8(grey.float())


def test_domain_classifier_cache_is_checked_and_never_silently_replaced(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    dataset = image_folder(tmp_path / "images")
    train = ["eval", "train-classifier", "--dataset", dataset, "--image-size", "16",
             "--epochs", "2", "--quiet"]
    assert main(train) == 0
    pt, sidecar = domain_paths(dataset, 16)
    meta = json.loads(sidecar.read_text())
    assert meta["sha256"] in capsys.readouterr().out
    assert meta["num_classes"] == 2 and 0.0 <= meta["test_accuracy"] <= 1.0
    assert cached_domain(dataset, 16)[1]["test_accuracy"] == meta["test_accuracy"]
    assert main(train) == 2 and "--force" in capsys.readouterr().err   # never replaced silently
    with pytest.raises(ConfigError, match="--force"):
        train_and_cache_domain(dataset, image_size=16, epochs=1, width=4, quiet=True)
    pt.write_bytes(pt.read_bytes() + b"tampered")
    with pytest.raises(ConfigError, match="sha256"):
        cached_domain(dataset, 16)
