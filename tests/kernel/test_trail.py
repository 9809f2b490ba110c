"""Checkpoint trails: the manifest and its checks, the stacked [K, P] matrix, combinations written
into one model in place, and the same streamed in chunks."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from helpers import train_tiny, trained_paths
from lcsc.kernel.errors import TrailError
from lcsc.kernel.io import write_json
from lcsc.kernel.nets import build_unet
from lcsc.kernel.tensors import load_tensors, save_tensors
from lcsc.kernel.trail import MANIFEST_FORMAT, ChunkedTrail, FlatLoader, Trail, check_state, combine


def test_combination_and_tampering(tmp_path):
    cfg = tiny_config(tmp_path)
    manifest = train_tiny(cfg, tmp_path / "t", 30)
    trail = Trail.open(manifest)
    model = build_unet(cfg["model"], 1)
    loader = FlatLoader(model)
    W = trail.stack(loader.shapes)
    assert W.shape == (3, loader.numel)
    c = torch.tensor([0.5, -0.25, 0.75])
    loader.load(combine(W, c))
    states = [load_tensors(trail.checkpoint_path(i)) for i in range(3)]
    for key, value in model.state_dict().items():
        expected = sum(ci * s[key] for ci, s in zip(c, states))
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 coefficients for a trail of 3"):
        combine(W, [1.0, 0.0])
    # a checkpoint of another architecture names the file
    other = build_unet(dict(cfg["model"], channels=4), 1)
    save_tensors(manifest.parent / "other.safetensors", other.state_dict())  # (a file outside the trail is refused)
    data = json.loads(manifest.read_text())
    data["checkpoints"][1]["file"] = "other.safetensors"
    from lcsc.kernel.io import sha256, write_json

    data["checkpoints"][1]["sha256"] = sha256(manifest.parent / "other.safetensors")
    write_json(manifest, data)
    with pytest.raises(TrailError, match="other.safetensors: not a checkpoint of this model"):
        Trail.open(manifest).stack(loader.shapes)
    # a changed file no longer matches its hash
    path = trail.checkpoint_path(0)
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(TrailError, match=path.name):
        Trail.open(manifest)


def test_candidates_are_written_into_one_model_in_place(trained):
    cfg, _ = trained
    manifest, _, _ = trained_paths(cfg)
    trail = Trail.open(manifest)
    model = build_unet(trail.model_config, 1)
    loader = FlatLoader(model)
    # every parameter is a view of the loader's one flat vector
    base, end = loader.flat.data_ptr(), loader.flat.data_ptr() + loader.flat.numel() * 4
    assert all(base <= p.data_ptr() < end for p in model.parameters())
    W = trail.stack(loader.shapes)
    c = np.array([0.7, -0.4, 0.2, 0.5])
    loader.combine_into(W, c)
    flat_params = torch.cat([v.reshape(-1) for v in model.state_dict().values()])
    assert torch.equal(flat_params, combine(W, c))
    with pytest.raises(ValueError, match="parameters per checkpoint"):
        loader.combine_into(W[:, :-1], c)
    model.double()  # parameters replaced: writing into the old vector would silently do nothing
    with pytest.raises(RuntimeError, match="parameters were replaced"):
        loader.combine_into(W, c)
    # the trail streamed in small chunks gives the same weights bit for bit
    chunked = ChunkedTrail(W, chunk_mb=0.01, device="cpu")
    assert len(chunked.blocks) > 3
    assert torch.equal(chunked.combine(c), combine(W, c))
    with pytest.raises(ValueError, match="3 coefficients for a trail of 4"):
        chunked.combine([1, 0, 0])


def test_manifest_entries_stay_inside_the_trail(ctx):
    manifest = ctx.trail()
    data = json.loads(manifest.read_text())
    assert len(Trail.open(manifest)) == len(data["checkpoints"])
    for bad in ("/etc/passwd", "../../../../../../etc/passwd", "../trail/../../x", "sub/../../x"):
        write_json(
            manifest, dict(data, checkpoints=[dict(data["checkpoints"][0], file=bad), *data["checkpoints"][1:]])
        )
        for verify in (True, False):
            with pytest.raises(TrailError, match=r"checkpoints\[0\] file .* outside the trail"):
                Trail.open(manifest, verify=verify)
    # a declared root must be relative and hold a trail
    for root, match in (("/", "relative"), ("..", "not a trail's folder")):
        write_json(manifest, dict(data, root=root))
        with pytest.raises(TrailError, match=match):
            Trail.open(manifest)


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", torch.full((2,), 0.5))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_flat_loader_holds_parameters_and_buffers_in_one_vector():
    torch.manual_seed(0)
    model = _WithBuffer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = FlatLoader(model)
    assert loader.keys == ["scale", "lin.weight", "lin.bias"] and loader.numel == 2 + 6 + 2  # state_dict order
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # its weights are kept
    flat = torch.arange(10, dtype=torch.float32)
    loader.load(flat)
    assert torch.equal(model.scale, flat[:2]) and torch.equal(model.lin.weight, flat[2:8].view(2, 3))
    assert torch.equal(model(torch.ones(1, 3))[0], (flat[2:8].view(2, 3).sum(1) + flat[8:]) * flat[:2])
    with pytest.raises(ValueError, match="flat vector has 9 entries, model has 10"):
        loader.load(torch.zeros(9))
    # one dtype for all: BatchNorm's integer step counter cannot be a view of a float vector
    with pytest.raises(ValueError, match=r"num_batches_tracked is torch.int64 on cpu, not torch.float32 on cpu"):
        FlatLoader(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))


def test_combine_and_the_chunked_trail_with_an_output_vector():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0]])
    expected = torch.tensor([-8.0, -16.0, -24.0, -32.0, -40.0])  # 2 row0 - row1
    assert torch.equal(combine(W, [2.0, -1.0]), expected)
    chunked = ChunkedTrail(W, chunk_mb=8 / 2**20, device="cpu")  # one column (2 x 4 bytes) per block
    assert len(chunked.blocks) == 5 and chunked.shape == (2, 5)
    out = torch.empty(5)
    assert chunked.combine([2.0, -1.0], out=out) is out and torch.equal(out, expected)
    assert torch.equal(combine(chunked, np.array([2.0, -1.0])), expected)
    with pytest.raises(ValueError, match="3 coefficients for a trail of 2 checkpoints"):
        combine(W, [1.0, 0.0, 0.0])


def test_check_state_names_the_file_and_what_differs():
    shapes = {"a": (2, 3), "b": (4,)}
    check_state({"a": torch.zeros(2, 3), "b": torch.zeros(4)}, shapes, "ok.safetensors")
    for state, detail in (
        ({"a": torch.zeros(2, 3)}, "missing ['b']"),
        ({"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}, "unexpected ['c']"),
        ({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, "a has shape (3, 2), the model (2, 3)"),
    ):
        with pytest.raises(TrailError) as err:
            check_state(state, shapes, "x.safetensors")
        assert str(err.value) == (
            f"x.safetensors: not a checkpoint of this model architecture ({detail}); it "
            "belongs to another model: restore it or rerun the stage that wrote it"
        )


def test_a_manifest_of_another_format_or_without_its_network_is_refused(tmp_path):
    manifest = tmp_path / "manifest.json"
    write_json(manifest, {"format": "lcsc-trail/0", "checkpoints": []})
    with pytest.raises(TrailError) as err:
        Trail.open(manifest)
    assert str(err.value) == (
        f"{manifest}: not an lcsc trail manifest (format 'lcsc-trail/0', not "
        f"{MANIFEST_FORMAT!r}); pass the manifest.json of a trail"
    )
    (tmp_path / "a.safetensors").write_bytes(b"x")
    entry = {"file": "a.safetensors", "sha256": "0" * 64, "step": 10}
    write_json(manifest, {"format": MANIFEST_FORMAT, "checkpoints": [entry]})
    trail = Trail.open(manifest, verify=False)  # the entries are fine; their bytes are not checked
    assert trail.steps == [10] and trail.files_root == tmp_path and trail.ema_paths() == {}
    with pytest.raises(TrailError, match="a.safetensors: its sha256 differs from the one in"):
        Trail.open(manifest)
    with pytest.raises(TrailError, match="manifest.json: no model_config .the network the trail trains."):
        trail.model_config
    write_json(manifest, {"format": MANIFEST_FORMAT, "checkpoints": [dict(entry, step=True)]})
    with pytest.raises(TrailError, match=r"checkpoints\[0\] has no valid step"):  # a bool is no step
        Trail.open(manifest, verify=False)
