"""DINOv2 features (FD_DINOv2): the ViT against a reference written with torch's own attention
and layer norm, the preprocessing, the weights (found, refused, changed), and the stage."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dinov2_standin
from lcsc.kernel.dinov2 import FILE, DINOv2Features, DinoViT, resolve_weights
from lcsc.kernel.errors import FeatureError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return dinov2_standin.build(tmp_path_factory.mktemp("dino") / FILE)


def reference_forward(state, x):
    """The ViT written out with nn.MultiheadAttention and nn.LayerNorm (an independent path)."""
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    h, w = tokens.shape[-2:]
    pos = state["pos_embed"]
    if (h, w) != (grid, grid):
        g = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        g = F.interpolate(g, scale_factor=((h + 0.1) / grid, (w + 0.1) / grid), mode="bicubic")
        pos = torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, h * w, dim)], 1)
    t = torch.cat([state["cls_token"].expand(len(x), 1, dim), tokens.flatten(2).transpose(1, 2)], 1) + pos
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        attn = nn.MultiheadAttention(dim, dim // 64, batch_first=True)
        attn.load_state_dict(
            {
                "in_proj_weight": p["attn.qkv.weight"],
                "in_proj_bias": p["attn.qkv.bias"],
                "out_proj.weight": p["attn.proj.weight"],
                "out_proj.bias": p["attn.proj.bias"],
            }
        )
        n1 = F.layer_norm(t, (dim,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        t = t + p["ls1.gamma"] * attn(n1, n1, n1, need_weights=False)[0]
        n2 = F.layer_norm(t, (dim,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        hidden = F.gelu(F.linear(n2, p["mlp.fc1.weight"], p["mlp.fc1.bias"]))
        t = t + p["ls2.gamma"] * F.linear(hidden, p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    return F.layer_norm(t, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 0]


@torch.no_grad()
def test_the_vit_equals_a_reference_at_the_trained_grid_and_at_224(weights):
    state = torch.load(weights, weights_only=True)
    net = DinoViT.from_state(state).eval()
    assert (net.grid, net.patch, len(net.blocks)) == (37, 14, 2)
    gen = torch.Generator().manual_seed(0)
    for size in (518, 224):
        x = torch.randn(2, 3, size, size, generator=gen)
        ours, ref = net(x), reference_forward(state, x)
        assert ours.shape == (2, 128)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert net.positions(16, 16).shape == (1, 257, 128) and net.positions(37, 37) is net.pos_embed


@torch.no_grad()
def test_features_preprocess_like_edm2_and_take_grey_images(weights):
    feats = DINOv2Features(weights, CPU)
    assert feats.dim == 128 and feats.hash.endswith("-dinov2")
    grey = torch.linspace(-1, 1, 2 * 12 * 12).reshape(2, 1, 12, 12)
    out = feats(grey)
    assert out.dtype == torch.float64 and out.shape == (2, 128)
    torch.testing.assert_close(out, feats(grey.expand(-1, 3, -1, -1)))  # grey is repeated to RGB
    torch.testing.assert_close(feats(grey, batch_size=1), out)
    # a constant image: 8-bit value v becomes (v / 255 - mean) / std in every pixel of its channel
    x = feats.preprocess(torch.full((1, 3, 8, 8), 0.5))
    v = round(1.5 * 127.5) / 255
    expect = torch.tensor([(v - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert x.shape == (1, 3, 224, 224)
    torch.testing.assert_close(x[0, :, 100, 100], expect, rtol=1e-5, atol=1e-5)


def test_weights_are_found_refused_and_never_unpickled(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub home"))
    with pytest.raises(FeatureError, match="features.weights is null and .* is not downloaded yet"):
        resolve_weights({"weights": None}, download=False)
    monkeypatch.setattr("lcsc.kernel.dinov2.URL", (tmp_path / "nowhere.pth").as_uri())
    with pytest.raises(FeatureError, match="tried to download .* and failed .*set features.weights"):
        resolve_weights({"weights": None})
    cached = tmp_path / "hub home" / "hub" / "checkpoints" / FILE
    assert not cached.exists()  # nothing half-written is kept
    dinov2_standin.build(cached)
    assert resolve_weights({"weights": None}) == cached.resolve()
    with pytest.raises(FeatureError, match="features.weights: .*missing.pth does not exist"):
        resolve_weights({"weights": str(tmp_path / "missing.pth")})
    bad = {"truncated.pth": weights.read_bytes()[:1000], "code.pth": None, "partial.pth": None}
    torch.save({"patch_embed.proj.weight": torch.zeros(8, 3, 14, 14)}, tmp_path / "partial.pth")
    torch.save({"obj": np.random.default_rng(0)}, tmp_path / "code.pth")  # a pickle of an arbitrary object
    (tmp_path / "truncated.pth").write_bytes(bad["truncated.pth"])
    for name in bad:
        with pytest.raises(FeatureError, match=f"features.weights: .*{name} is not a DINOv2 ViT state dict"):
            DINOv2Features(tmp_path / name, CPU)


@pytest.mark.slow
def test_stage_descriptor_and_reference_stats(weights, tmp_path, capsys):
    import shutil

    import yaml

    from conftest import tiny_config
    from lcsc.cli import main
    from lcsc.kernel import gate
    from lcsc.kernel.features import check_gate, load_features
    from lcsc.kernel.fid import load_stats
    from lcsc.kernel.paths import Layout

    local = tmp_path / "my weights" / FILE
    local.parent.mkdir()
    shutil.copyfile(weights, local)
    cfg = tiny_config(tmp_path / "results", features={"kind": "dinov2", "weights": str(local)})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["dinov2-features", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = Layout.of(cfg)
    descriptor = layout.feature_net("dinov2")
    assert descriptor.name == "dinov2.json"
    assert main(["reference-stats", "--config", str(tmp_path / "c.yaml"), "--split", "test"]) == 0
    net = load_features(descriptor, CPU)
    # the stage gated the space on the digits' splits and the search follows its verdict (the
    # random stand-in is no DINOv2: it may fail, and is refused then, naming the failed sets)
    record = net.gate
    assert set(record["broken"]) == set(gate.BROKEN) and record["floor"] > 0
    assert (record["train"], record["held_out"]) == (1438, 359)
    for name, row in record["broken"].items():
        assert row["ratio"] == pytest.approx(row["fid"] / record["floor"])
        assert (name in record["failed"]) == (row["ratio"] < gate.RATIO)
    assert record["passed"] == (not record["failed"])
    assert "the sanity gate of features.kind dinov2" in capsys.readouterr().out
    if record["passed"]:
        check_gate(net)
    else:
        with pytest.raises(FeatureError, match="features.kind dinov2 failed its sanity gate") as err:
            check_gate(net)
        assert all(name in str(err.value) for name in record["failed"])
    mu, sigma = load_stats(layout.stats("digits12", "test", "dinov2"), net.hash)
    assert mu.shape == (128,) and sigma.shape == (128, 128)
    dinov2_standin.build(local, seed=1)  # other bytes in the same file
    with pytest.raises(FeatureError, match="changed since dinov2_features"):
        load_features(descriptor, CPU)
    assert main(["train-features", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "features.kind: 'dinov2'" in capsys.readouterr().err
