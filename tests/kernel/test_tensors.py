"""Tensor files are data, never code: pickles are refused, cut files are named."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from lcsc.kernel.errors import InputError
from lcsc.kernel.tensors import load_tensors, save_tensors


class Payload:
    """Unpickling this runs a shell command: the kind of file a checkpoint must never be."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"weight": Payload(marker)}, fh, protocol=2)
    # the file is really malicious: a plain unpickling in another process runs the payload
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.load(open({str(evil)!r}, 'rb'))"], check=True, cwd=tmp_path
    )
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match=r"evil.pt: refused to load.*weights_only=True"):
        load_tensors(evil)
    assert not marker.exists()
    # a plain tensor .pt file still loads
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_truncated_safetensors_names_the_file(tmp_path):
    save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(100)})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:20])
    with pytest.raises(ValueError, match="w.safetensors: not a readable safetensors file"):
        load_tensors(tmp_path / "w.safetensors")


def test_tensors_round_trip_and_a_missing_or_foreign_file_is_named(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1.5], dtype=torch.float64)}
    save_tensors(tmp_path / "t.safetensors", tensors, metadata={"lcsc": "x"})
    back = load_tensors(tmp_path / "t.safetensors")
    assert set(back) == {"w", "b"} and all(
        torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors
    )
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # written atomically, no temp left
    with pytest.raises(FileNotFoundError) as err:
        load_tensors(tmp_path / "nowhere.safetensors")
    assert err.value.filename == str(tmp_path / "nowhere.safetensors")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(InputError, match=r"list.pt: expected a dict of tensors, got list"):
        load_tensors(tmp_path / "list.pt")
