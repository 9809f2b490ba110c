"""The search's append-only journal: records kept, a torn last line dropped, one writer at a time."""

import pytest

from lcsc.kernel.journal import Journal


def test_journal_keeps_saved_records_and_drops_a_torn_one(tmp_path):
    path = tmp_path / "state" / "journal.jsonl"
    j = Journal(path)
    j.start()
    j.append({"type": "eval", "key": "a", "fitness": 0.1 + 0.2, "seconds": 1.0})
    j.close()
    with open(path, "ab") as fh:  # a record cut short by a kill
        fh.write(b'{"type":"eval","key":"b","fitn')
    peek = Journal(path, readonly=True)  # a read-only look keeps the torn bytes
    assert peek.dropped and path.read_bytes().endswith(b'"fitn')
    again = Journal(path)
    assert again.dropped == len(b'{"type":"eval","key":"b","fitn')
    assert [r.get("key") for r in again.records] == [None, "a"]
    assert again.records[1]["fitness"] == 0.1 + 0.2  # floats round-trip exactly
    again.append({"type": "eval", "key": "c", "fitness": 2.0, "seconds": 0.0})
    again.close()
    assert [r.get("key") for r in Journal(path).records] == [None, "a", "c"]
    # one writer at a time: a second search on the same journal is refused while the first runs
    first = Journal(path)
    with pytest.raises(RuntimeError, match="another search is running on this journal"):
        Journal(path)
    assert len(Journal(path, readonly=True).records) == 3  # reading is allowed and changes nothing
    first.close()
    # a bad line before the last one is never dropped silently
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"key":"a"', b'"key":"a'))
    with pytest.raises(ValueError, match="line 2 of 3 is not a complete JSON record"):
        Journal(path)
    assert path.read_bytes() == good.replace(b'"key":"a"', b'"key":"a')  # and the file is left as it was
    path.write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match="not an lcsc search journal"):
        Journal(path)


def test_a_new_journal_is_empty_and_a_read_only_look_creates_nothing(tmp_path):
    path = tmp_path / "state" / "journal.jsonl"
    peek = Journal(path, readonly=True)
    assert peek.records == [] and peek.dropped == 0 and not path.parent.exists()
    j = Journal(path)
    assert j.records == [] and path.exists() and path.read_bytes() == b""
    j.start()
    j.append({"type": "eval", "key": "k", "fitness": 1.5, "seconds": 0.25})
    j.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and lines[1] == '{"type":"eval","key":"k","fitness":1.5,"seconds":0.25}'
    assert Journal(path, readonly=True).records[1] == {"type": "eval", "key": "k", "fitness": 1.5, "seconds": 0.25}
    again = Journal(path)  # a resumed search: its header is there already
    again.start()
    again.close()
    assert path.read_text().splitlines() == lines
