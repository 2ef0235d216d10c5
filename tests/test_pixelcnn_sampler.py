"""The cached PixelCNN sampler draws the same uint8 images as the reference sampler (H * W * C full
forward passes) for the same seed: grey and colour, conditional and not, on tiny random nets."""
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import pixelcnn
from pipeline.models.layers import to_float

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 5            # images per batch (odd, so nothing lines up by accident)
NUM_CLASSES = 4


def peaked_model(image_shape, num_classes, kernel=3, seed=0):
    """A tiny net with weights scaled up so its 256-way softmaxes are far from uniform: draws
    from near-uniform distributions would agree between samplers too easily."""
    torch.manual_seed(seed)
    cfg = pixelcnn.Config(channels=8, layers=3, kernel=kernel, head_channels=16)
    nets = pixelcnn.build(cfg, image_shape, num_classes)
    with torch.no_grad():
        for p in nets["model"].parameters():
            p.mul_(3.0)
    nets["model"].eval()
    return cfg, nets


def draw(sampler, cfg, nets, labels, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sampler(cfg, nets, N, labels, device="cpu")


def mean_entropy_bits(model, x, labels) -> float:
    """Mean entropy of the model's 256-way distributions over every sub-pixel of x."""
    with torch.no_grad():
        logp = F.log_softmax(model(to_float(x), labels).float(), dim=1)
    return (-(logp.exp() * logp).sum(1).mean() / math.log(2)).item()


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("image_shape,kernel", [((1, 8, 8), 3), ((3, 8, 8), 3), ((3, 5, 7), 5)],
                         ids=["grey-8x8", "colour-8x8", "colour-5x7-kernel5"])
def test_fast_sampler_matches_reference(image_shape, kernel, conditional):
    num_classes = NUM_CLASSES if conditional else 0
    cfg, nets = peaked_model(image_shape, num_classes, kernel)
    labels = torch.arange(N) % NUM_CLASSES if conditional else None
    for seed in (1, 2):
        reference = draw(pixelcnn.sample_reference, cfg, nets, labels, seed)
        fast = draw(pixelcnn.sample, cfg, nets, labels, seed)
        assert fast.dtype == torch.uint8 and fast.shape == (N, *image_shape)
        mismatch = (fast != reference).sum().item()
        assert mismatch == 0, f"seed {seed}: {mismatch} of {fast.numel()} sub-pixels differ"
    # The check means something: peaked distributions, varied images, and a different seed
    # gives different images.
    assert mean_entropy_bits(nets["model"], fast, labels) < 7.0
    assert len(torch.unique(fast)) > 20
    assert not torch.equal(fast, draw(pixelcnn.sample, cfg, nets, labels, 1))


def test_labels_steer_the_fast_sampler():
    cfg, nets = peaked_model((1, 8, 8), NUM_CLASSES)
    a = draw(pixelcnn.sample, cfg, nets, torch.zeros(N, dtype=torch.long), seed=1)
    b = draw(pixelcnn.sample, cfg, nets, torch.ones(N, dtype=torch.long), seed=1)
    assert not torch.equal(a, b)


def test_image_shape_comes_from_the_network():
    cfg, nets = peaked_model((3, 6, 4), 0)
    assert nets["model"].image_shape == (3, 6, 4)
    assert pixelcnn.sample(cfg, nets, 2).shape == (2, 3, 6, 4)
