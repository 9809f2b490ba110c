"""The side-by-side picture reads grids from a results folder: anything may be there."""

import pytest
from PIL import Image

from lcsc.kernel.plots import MAX_GRID_PIXELS, side_by_side


def test_side_by_side_refuses_a_grid_too_large_to_be_one_and_draws_real_ones(tmp_path):
    Image.new("L", (16, 16)).save(tmp_path / "grid.png")
    Image.new("L", (5000, 5000)).save(tmp_path / "huge.png")  # 25 Mpx: no sample grid is this large
    assert 5000 * 5000 > MAX_GRID_PIXELS
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"huge\.png: 5000x5000 pixels"):
        side_by_side({"real images": tmp_path / "huge.png", "last": tmp_path / "grid.png"}, tmp_path / "o.png", "t")
    with pytest.raises(OSError):  # what tabulate and export turn into one line
        side_by_side({"real images": tmp_path / "junk.png", "last": tmp_path / "grid.png"}, tmp_path / "o.png", "t")
    assert not (tmp_path / "o.png").exists()
    side_by_side({"real images": tmp_path / "grid.png", "last": tmp_path / "grid.png"}, tmp_path / "o.png", "t")
    with Image.open(tmp_path / "o.png") as picture:
        assert picture.width == 2 * 320
