"""Foreign checkpoint files are read as data: state dicts at a key path with a prefix stripped,
and pickles with code refused before any of it runs."""

import pytest
import torch

from foreign_trails import write_payload
from lcsc.kernel.checkpoints import describe, first_difference, read_state
from lcsc.kernel.errors import TrailError
from lcsc.kernel.tensors import save_tensors


def test_key_path_and_prefix(tmp_path):
    w = torch.arange(6.0).reshape(2, 3)
    torch.save({"ema": {"net": {"module.conv.weight": w, "bias": torch.ones(2)}}, "step": 5}, tmp_path / "a.ckpt")
    state = read_state(tmp_path / "a.ckpt", "ema.net", "module.")
    assert sorted(state) == ["bias", "conv.weight"]
    assert torch.equal(state["conv.weight"], w)
    save_tensors(tmp_path / "b.safetensors", {"model.x": w})
    assert torch.equal(read_state(tmp_path / "b.safetensors", None, "model.")["x"], w)


def test_missing_key_names_the_file_and_the_keys_there(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, tmp_path / "l.ckpt")
    with pytest.raises(
        TrailError, match=r"l\.ckpt: no key 'ema' \(trail\.key 'ema'\); the keys there are state_dict, epoch"
    ):
        read_state(tmp_path / "l.ckpt", "ema")
    with pytest.raises(TrailError, match="'epoch' is a int, not a tensor"):
        torch.save({"w": torch.ones(1), "epoch": 3}, tmp_path / "m.pt")
        read_state(tmp_path / "m.pt")


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "network-snapshot-000100.pkl"])
def test_a_pickle_with_a_payload_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "PWNED"
    path = write_payload(tmp_path / name, marker)
    with pytest.raises(TrailError) as err:
        read_state(path, "state_dict")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "never unpickle" in message and "state_dict()" in message  # how to convert it, in the user's env
    assert not marker.exists()


def test_a_torch_zip_with_a_payload_is_refused_and_never_runs(tmp_path):
    from foreign_trails import Payload

    marker = tmp_path / "PWNED"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(TrailError, match=r"model\.pt: holds pickled Python objects"):
        read_state(tmp_path / "model.pt", "state_dict")
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    torch.save({"w": torch.ones(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrailError, match=r"cut\.pt: not a readable torch checkpoint"):
        read_state(tmp_path / "cut.pt")
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(TrailError, match=r"list\.pt: holds a list, not a dict of tensors"):
        read_state(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        read_state(tmp_path / "gone.pt")


def test_describe_and_first_difference(tmp_path):
    a = {"w": torch.ones(2, 2), "b": torch.ones(2, dtype=torch.bfloat16)}
    assert describe(a, "x") == ("bfloat16+float32", 6)
    with pytest.raises(TrailError, match="'n' is torch.int64, not a float tensor"):
        describe({"n": torch.ones(1, dtype=torch.long)}, "x")
    assert first_difference(a, a) is None
    assert first_difference({"w": a["w"]}, a) == "it lacks 'b'"
    assert first_difference({**a, "w": torch.ones(3)}, a) == "'w' has shape (3,), not (2, 2)"
    assert first_difference({**a, "z": torch.ones(1)}, a) == "it has the extra key 'z'"
