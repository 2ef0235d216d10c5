"""pipeline/checkpoint.py: a checkpoint is untrusted input. It round-trips a model exactly; a
pickle that runs code, a wrong format version or garbage is refused with one line, and the
payload's code never runs."""
import pytest
import torch

from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.loop import build_nets
from pipeline.data import ImageData


class RunsCode:
    """What a malicious checkpoint carries: unpickling calls exec(source)."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


def tiny_ae():
    cfg = Config.from_dict({"model": "ae", "ae": {"width": 4, "latent_dim": 4}})
    data = ImageData(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4).long(), 10)
    nets, opts = build_nets(cfg, data, torch.device("cpu"), 1)
    return cfg, nets, opts


def evil_checkpoint(directory, marker) -> tuple:
    """A checkpoint.pt that is a genbench checkpoint in every key, plus a code payload."""
    cfg, nets, opts = tiny_ae()
    path = ckpt.save(directory, nets, opts, 3, cfg.to_dict(), "r" * 32)
    payload = torch.load(path, weights_only=True)
    payload["extra"] = RunsCode(f"open({str(marker)!r}, 'w').write('pwned')")
    torch.save(payload, path)
    return path


def test_round_trip_restores_weights_optimizer_and_step(tmp_path):
    cfg, nets, opts = tiny_ae()
    loss = nets["model"](torch.rand(2, 1, 28, 28)).sum()
    loss.backward()
    opts["model"].step()   # optimizer state worth saving (Adam moments)
    ckpt.save(tmp_path, nets, opts, 7, cfg.to_dict(), "run")
    _, fresh_nets, fresh_opts = tiny_ae()
    payload = ckpt.load(tmp_path)
    assert ckpt.restore(payload, fresh_nets, fresh_opts) == 7
    assert payload["format"] == ckpt.FORMAT and payload["mlflow_run_id"] == "run"
    for a, b in zip(nets["model"].state_dict().values(),
                    fresh_nets["model"].state_dict().values()):
        assert torch.equal(a, b)
    assert str(opts["model"].state_dict()) == str(fresh_opts["model"].state_dict())


def test_the_test_payload_really_runs_code_when_unpickled_unsafely(tmp_path):
    """Guard for the test below: loaded without weights_only, this file writes the marker (the
    pickle names only builtins.exec, so any process that unpickles it runs the code)."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path, marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path, marker)
    with pytest.raises(ConfigError) as err:
        ckpt.load(path)
    message = str(err.value)
    assert f"checkpoint {path} is corrupt or not a genbench checkpoint" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("version, words", [(2, "has format version 2, this genbench reads "
                                                 "version 1"),
                                            ("1", "has format version '1'"),
                                            (None, "no format version")])
def test_a_wrong_format_version_is_refused_with_one_line(version, words, tmp_path):
    cfg, nets, opts = tiny_ae()
    path = ckpt.save(tmp_path, nets, opts, 3, cfg.to_dict(), "run")
    payload = torch.load(path, weights_only=True)
    if version is None:
        del payload["format"]
    else:
        payload["format"] = version
    torch.save(payload, path)
    with pytest.raises(ConfigError, match=words) as err:
        ckpt.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_garbage_and_a_missing_file_are_one_line(tmp_path):
    (tmp_path / ckpt.FILENAME).write_bytes(b"not a torch file" * 8)
    with pytest.raises(ConfigError, match="corrupt or not a genbench checkpoint"):
        ckpt.load(tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint at"):
        ckpt.load(tmp_path / "nope")
