"""Atomic outputs and JSON inputs: a failed write keeps the old file, a bad file is one error naming it."""

import errno
import json
import os

import pytest

from lcsc.kernel.errors import InputError
from lcsc.kernel.io import atomic_path, json_digest, read_json, reading, remove_stale_temps, write_json


@pytest.mark.parametrize(
    "failure, needle",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
)
def test_write_failures_name_the_path_and_keep_the_old_file(tmp_path, monkeypatch, failure, needle):
    target = tmp_path / "out" / "result.json"
    write_json(target, {"old": 1})

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError) as err:
        write_json(target, {"new": 2})
    assert needle in str(err.value) and str(target) in str(err.value)
    assert json.loads(target.read_text()) == {"old": 1}  # never half-written
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temp file left


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.") and tmp.name.endswith(".tmp")
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(tmp_path / "new" / "deep.txt") as tmp:  # folders are made on the way
        tmp.write_text("new")
    assert (tmp_path / "new" / "deep.txt").read_text() == "new"
    # what a SIGKILL left behind is removed by the next run; other files stay
    (tmp_path / ".out.txt.abc.tmp").write_text("torn")
    (tmp_path / "keep.tmp").write_text("not ours")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "new", "out.txt"]


@pytest.mark.parametrize(
    "content, keys, message",
    [
        (b'{"a": 1, "b"', (), r"bad.json: not valid JSON \(Expecting ':' delimiter: line 1 column 13\); fix it"),
        (b'{"a": "\x80"}', (), r"bad.json: not a JSON file \(not UTF-8 text: invalid start byte at byte 7\); fix it"),
        (b"[1, 2]", ("a",), r"bad.json: holds a JSON list, not the object this stage reads; fix it"),
        (b'{"a": 1}', ("a", "b", "c"), r"bad.json: has no 'b', 'c'; not the file this stage reads; fix it"),
    ],
)
def test_read_json_names_the_file_and_what_is_wrong(tmp_path, content, keys, message):
    (tmp_path / "bad.json").write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_json(tmp_path / "bad.json", "fix it", keys=keys)
    assert str(err.value).startswith(str(tmp_path / "bad.json")) and "\n" not in str(err.value)


def test_read_json_reads_back_what_write_json_wrote(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"x": "y"}, "f": 0.1 + 0.2}
    write_json(tmp_path / "o.json", obj)
    assert read_json(tmp_path / "o.json", keys=("a", "b")) == obj
    assert list(read_json(tmp_path / "o.json")) == ["b", "a", "f"]  # the order as written
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


def test_reading_turns_a_parse_failure_into_one_line_naming_the_file(tmp_path):
    with pytest.raises(InputError) as err:
        with reading(tmp_path / "s.npz", "reference statistics", "rerun reference_stats"):
            {}["mu"]
    assert str(err.value) == f"{tmp_path / 's.npz'}: not reference statistics (no 'mu' in it); rerun reference_stats"
    with pytest.raises(InputError, match=r"x.bin: not a weights file \(bad magic\); restore it"):
        with reading(tmp_path / "x.bin", "a weights file", "restore it"):
            raise ValueError("bad magic. Try allow_pickle=True to load it anyway.\nmore")
    # an error that already names its file passes as it is
    with pytest.raises(FileNotFoundError):
        with reading(tmp_path / "x.bin", "a weights file", "restore it"):
            open(tmp_path / "x.bin")


def test_json_digest_is_independent_of_key_order():
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    assert json_digest({"a": 1}) != json_digest({"a": 1.5}) and len(json_digest({})) == 64
