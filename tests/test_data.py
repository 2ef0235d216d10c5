"""Datasets in memory, the seeded train/val split, and per-rank sharding."""
import gzip
import struct

import pytest
import torch

from pipeline.data import (DEBIAN_FASHION_MNIST, ImageData, ShardedBatches, load_raw,
                           load_split)
from pipeline.errors import ConfigError

needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="the Debian package dataset-fashion-mnist is not installed")


def write_idx(path, tensor: torch.Tensor) -> None:
    header = struct.pack(">HBB", 0, 0x08, tensor.ndim) + struct.pack(
        ">" + "I" * tensor.ndim, *tensor.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + tensor.numpy().tobytes())


@pytest.fixture
def numbered_idx(tmp_path):
    """A tiny MNIST-format dataset whose image i holds its own index (in pixels 0 and 1), so
    splits and shards can be checked exactly."""
    def make(n):
        idx = torch.arange(n)
        images = torch.zeros(n, 28, 28, dtype=torch.uint8)
        images[:, 0, 0], images[:, 0, 1] = (idx // 256).to(torch.uint8), (idx % 256).to(torch.uint8)
        return images, (idx % 10).to(torch.uint8)
    for prefix, n in (("train", 500), ("t10k", 100)):
        images, labels = make(n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def ids(data: ImageData) -> list[int]:
    return (data.images[:, 0, 0, 0].long() * 256 + data.images[:, 0, 0, 1].long()).tolist()


@needs_fashion_mnist
def test_fashion_mnist_from_the_debian_package():
    train = load_raw("fashion-mnist", train=True)
    test = load_raw("fashion-mnist", train=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.shape == (60000,) and train.labels.dtype == torch.int64
    assert train.num_classes == 10 and set(train.labels.unique().tolist()) == set(range(10))
    assert torch.allclose(train.class_frequencies(), torch.full((10,), 0.1, dtype=torch.float64))
    assert train.images.float().mean() > 10  # real pixels, not zeros

    tr = load_split("fashion-mnist", "train", val_fraction=0.1, split_seed=0)
    val = load_split("fashion-mnist", "val", val_fraction=0.1, split_seed=0)
    assert (len(tr), len(val)) == (54000, 6000)
    assert len(load_split("fashion-mnist", "test")) == 10000


def test_idx_files_from_a_data_directory(numbered_idx):
    data = load_raw("mnist", train=True, root=str(numbered_idx))
    assert data.images.shape == (500, 1, 28, 28) and ids(data) == list(range(500))
    assert len(load_raw("mnist", train=False, root=str(numbered_idx))) == 100


def test_split_is_fixed_by_seed_disjoint_and_complete(numbered_idx):
    def split(name, seed):
        return ids(load_split("mnist", name, str(numbered_idx), val_fraction=0.2,
                              split_seed=seed))
    train, val = split("train", 0), split("val", 0)
    assert (len(train), len(val)) == (400, 100)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(500))
    assert split("train", 0) == train and split("val", 0) == val   # same seed, same split
    assert split("val", 1) != val                                   # the seed moves it
    test = ids(load_split("mnist", "test", str(numbered_idx)))
    assert test == list(range(100))   # the test split is the dataset's own, untouched


def test_unknown_split_and_dataset_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown split"):
        load_split("fashion-mnist", "holdout")
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_raw("imagenet-9000", train=True)


def test_missing_data_offline_is_a_config_error(tmp_path, offline_torchvision):
    """Neither on disk nor downloadable (offline): one line saying where to put it."""
    with pytest.raises(ConfigError, match="not on disk and could not be downloaded") as err:
        load_raw("cifar10", train=True, root=str(tmp_path / "empty"))
    assert "cifar-10-batches-py" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="put it in .*the four IDX files"):
        load_raw("mnist", train=False, root=str(tmp_path / "empty"))


def write_pngs(folder, mode, colors, size=(40, 48)):
    """One PNG per colour in folder (created), in PIL mode "L" (grey levels) or "RGB"."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        Image.new(mode, size, color).save(folder / f"{i}.png")


def test_image_folder(tmp_path):
    for cls, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        for split in ("train", "test"):
            write_pngs(tmp_path / split / cls, "RGB", [color] * 3)
    data = load_raw(str(tmp_path), train=True, image_size=16)
    assert data.images.shape == (6, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.num_classes == 2 and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images[0, 0].float().mean() == 255 and data.images[-1, 2].float().mean() == 255
    assert len(load_raw(str(tmp_path), train=False, image_size=16)) == 6


def test_image_folder_without_train_dir_never_trains_on_test_images(tmp_path):
    """DIR/<class>/ beside DIR/test/<class>/: test/ is not a class of the train split (it was:
    torchvision's ImageFolder(DIR) trained on every test image, with K+1 classes)."""
    write_pngs(tmp_path / "cats", "L", [10, 11, 12])
    write_pngs(tmp_path / "dogs", "L", [20, 21])
    write_pngs(tmp_path / "test" / "cats", "L", [110])     # grey levels no train image has
    write_pngs(tmp_path / "test" / "dogs", "L", [120, 121])
    train = load_split(str(tmp_path), "train", val_fraction=0.0, image_size=8)
    test = load_split(str(tmp_path), "test", image_size=8)
    train_levels = sorted(train.images[:, 0, 0, 0].tolist())
    assert train_levels == [10, 11, 12, 20, 21]                  # only the train images
    assert not set(train_levels) & set(test.images[:, 0, 0, 0].tolist())
    assert train.num_classes == test.num_classes == 2
    assert test.labels.tolist() == [0, 1, 1]                     # cats = 0, dogs = 1 in both
    assert train.labels.tolist() == [0, 0, 0, 1, 1]


def test_image_folder_splits_must_have_the_same_classes(tmp_path):
    write_pngs(tmp_path / "train" / "cats", "L", [1])
    write_pngs(tmp_path / "train" / "dogs", "L", [2])
    write_pngs(tmp_path / "test" / "cats", "L", [3])
    write_pngs(tmp_path / "test" / "birds", "L", [4])
    assert len(load_raw(str(tmp_path), train=True, image_size=8)) == 2
    with pytest.raises(ConfigError, match="extra: birds; missing: dogs") as err:
        load_raw(str(tmp_path), train=False, image_size=8)
    assert "\n" not in str(err.value)


def test_grey_png_folder_loads_as_one_channel(tmp_path):
    """Grey PNGs stay grey: 3 repeated channels would let a likelihood model predict G and B
    from R for free (about a third of the true bits/dim)."""
    for split in ("train", "test"):
        write_pngs(tmp_path / split / "a", "L", [0, 77, 255])
    data = load_raw(str(tmp_path), train=True, image_size=16)
    assert data.images.shape == (3, 1, 16, 16)
    assert data.images[:, 0, 0, 0].tolist() == [0, 77, 255]
    assert load_raw(str(tmp_path), train=False, image_size=16).images.shape == (3, 1, 16, 16)


def test_mixed_grey_and_colour_folder_is_a_config_error(tmp_path):
    write_pngs(tmp_path / "train" / "a", "L", [5, 6])
    write_pngs(tmp_path / "train" / "b", "RGB", [(1, 2, 3)])
    with pytest.raises(ConfigError, match="mixes grey and colour images.*convert them all"):
        load_raw(str(tmp_path), train=True, image_size=8)


def test_grey_train_and_colour_test_is_a_config_error(tmp_path):
    write_pngs(tmp_path / "train" / "a", "L", [5])
    write_pngs(tmp_path / "test" / "a", "RGB", [(1, 2, 3)])
    with pytest.raises(ConfigError, match="differ in colour mode"):
        load_raw(str(tmp_path), train=False, image_size=8)


def test_decompression_bomb_in_an_image_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """A PNG that declares 20000x20000 pixels (400 MB decoded, 400 KB on disk) in a dataset
    folder: refused from its header, before any decoding, with the file and PIL's limit; one
    line and exit 2 from the CLI."""
    from PIL import Image

    from genbench.cli import main
    from testing.evalkit import decompression_bomb

    write_pngs(tmp_path / "data" / "train" / "a", "L", [5, 6])
    write_pngs(tmp_path / "data" / "test" / "a", "L", [7])
    bomb = decompression_bomb(tmp_path / "data" / "train" / "a" / "big.png")
    with pytest.raises(ConfigError, match=r"big\.png declares more than .*MAX_IMAGE_PIXELS"):
        load_raw(str(tmp_path / "data"), train=True, image_size=8)
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "train-classifier", "--dataset", str(tmp_path / "data"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bomb) in err[0] and "MAX_IMAGE_PIXELS" in err[0]
    # between 1x and 2x PIL's limit PIL only warns: refused all the same, with its size
    bomb.unlink()
    write_pngs(tmp_path / "data" / "train" / "a", "L", [8], size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ConfigError, match=r"0\.png is 40x30 pixels, more than 1000 "
                                          r"\(PIL\.Image\.MAX_IMAGE_PIXELS"):
        load_raw(str(tmp_path / "data"), train=True, image_size=8)


def test_empty_folder_and_idx_folder_as_dataset(tmp_path, numbered_idx):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found under .*empty.*one sub-folder"):
        load_raw(str(tmp_path / "empty"), train=True)
    with pytest.raises(ConfigError, match="holds IDX files .*--set data.root="):
        load_raw(str(numbered_idx), train=True)


def test_truncated_idx_file_is_named(numbered_idx):
    path = numbered_idx / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError, match=f"{path} is truncated or corrupt.*download"):
        load_raw("mnist", train=True, root=str(numbered_idx))


def test_idx_file_shorter_than_its_header_says(numbered_idx):
    """A file cut at a gzip member boundary decompresses cleanly but holds too few pixels."""
    path = numbered_idx / "train-labels-idx1-ubyte.gz"
    with gzip.open(path) as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-7])
    with pytest.raises(ConfigError, match="truncated or corrupt .*493 bytes .*says 500"):
        load_raw("mnist", train=True, root=str(numbered_idx))


# --- sharding ------------------------------------------------------------------------------

def numbered(n: int) -> ImageData:
    """Labels carry the image index, so shards can be compared exactly."""
    return ImageData(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n), n)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_are_disjoint_and_cover_the_global_batch(world):
    data, global_batch = numbered(100), 12
    single = ShardedBatches(data, global_batch, rank=0, world=1, seed=5)
    shards = [ShardedBatches(data, global_batch, rank=r, world=world, seed=5)
              for r in range(world)]
    assert single.steps_per_epoch == 8
    for step in range(2 * single.steps_per_epoch + 1):      # crosses two epoch boundaries
        whole = single.batch(step)[1].tolist()
        parts = [s.batch(step)[1].tolist() for s in shards]
        assert all(len(p) == global_batch // world for p in parts)
        flat = [i for p in parts for i in p]
        assert len(set(flat)) == len(flat), "ranks share an image"
        assert sorted(flat) == sorted(whole), "the shards do not make up the global batch"


def test_an_epoch_visits_each_image_at_most_once_and_epochs_reshuffle():
    data = numbered(50)
    batches = ShardedBatches(data, 10, rank=0, world=1, seed=0)
    epoch0 = [i for s in range(5) for i in batches.batch(s)[1].tolist()]
    epoch1 = [i for s in range(5, 10) for i in batches.batch(s)[1].tolist()]
    assert sorted(epoch0) == list(range(50)) and sorted(epoch1) == list(range(50))
    assert epoch0 != epoch1


def test_batches_are_deterministic_per_step():
    """A resumed run (fresh object, any call order) sees the same batch at the same step."""
    data = numbered(64)
    a = ShardedBatches(data, 8, rank=1, world=2, seed=3)
    b = ShardedBatches(data, 8, rank=1, world=2, seed=3)
    forward = [a.batch(s)[1].tolist() for s in range(20)]
    backward = [b.batch(s)[1].tolist() for s in reversed(range(20))][::-1]
    assert forward == backward
    assert ShardedBatches(data, 8, 1, 2, seed=4).batch(0)[1].tolist() != forward[0]


def test_batch_size_not_divisible_by_workers():
    with pytest.raises(ConfigError, match="does not divide across 3 workers"):
        ShardedBatches(numbered(100), 10, rank=0, world=3, seed=0)


def test_batch_larger_than_dataset():
    with pytest.raises(ConfigError, match="larger than the dataset"):
        ShardedBatches(numbered(10), 16, rank=0, world=1, seed=0)


def test_half_an_idx_dataset_under_root_is_not_silently_replaced(numbered_idx):
    """data.root holds the images but not the labels: an error, not the Debian copy instead."""
    (numbered_idx / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="has the train images .* but not its labels"):
        load_raw("fashion-mnist", train=True, root=str(numbered_idx))
