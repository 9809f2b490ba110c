"""Expected failures as one line: `lcsc <stage>: <file or key>: <what is wrong>; <what to do>`."""

from __future__ import annotations

import contextlib
import errno
import sys

import yaml

from ..kernel.errors import ConfigError, LcscError

# what to do about an OSError, by errno (when its message does not say already)
_OS_HINTS = {
    errno.ENOENT: "check the path, or run the stage that writes it first",
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move it away or choose another path",
    errno.EEXIST: "something is in the way there: move it away or choose another path",
    errno.EISDIR: "that is a folder: give the file",
    errno.ENOSPC: "free some space and rerun",
    errno.EDQUOT: "free some space and rerun",
    errno.EROFS: "the file system is read-only: choose another folder",
}


def _one_line(exc: BaseException) -> str:
    """The message of an expected failure on one line. A ConfigError that lists several bad keys
    keeps one key per line under its header; with a single key it is just that line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].endswith(":"):  # "invalid configuration:" and one key
        return lines[1]
    if isinstance(exc, ConfigError) and len(lines) > 2 and lines[0].endswith(":"):
        return str(exc).strip()
    return " ".join(lines) or type(exc).__name__


def _os_message(exc: OSError) -> str:
    """`<file>: <what is wrong>; <what to do>` for an OSError that names its file."""
    if exc.filename is None:
        return _one_line(exc)
    name = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    what = " ".join((exc.strerror or str(exc)).split())
    hint = _OS_HINTS.get(exc.errno)
    return f"{name}: {what}" + (f"; {hint}" if hint and ";" not in what else "")


def _yaml_message(exc) -> str:
    """`<file>:<line>:<column>: <problem>; fix the YAML` for a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = (
        f"{mark.name}:{mark.line + 1}:{mark.column + 1}"
        if mark is not None
        else getattr(exc, "name", None) or "the config"
    )  # a ReaderError (not text) has no mark
    problem = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or _one_line(exc)
    return f"{where}: not valid YAML ({problem}); fix the file"


def _end_progress() -> None:
    """Close the progress bars a failed stage left open, so that its error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        with contextlib.suppress(Exception):
            bar.close()


def _guarded(prog: str, work) -> int:
    """Run `work()`: 0; an expected failure is one line on stderr and 2, an interrupt 130."""
    try:
        work()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (lcsc.kernel.interrupts)
        _end_progress()
        with contextlib.suppress(OSError):  # after a Ctrl-C the rule's `tee` may be gone: a broken pipe
            print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except LcscError as exc:
        message = _one_line(exc)
    except OSError as exc:
        message = _os_message(exc)
    except yaml.YAMLError as exc:  # the --config file
        message = _yaml_message(exc)
    else:
        return 0
    _end_progress()
    print(f"{prog}: {message}", file=sys.stderr)
    return 2
