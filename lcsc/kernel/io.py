"""Atomic file output (temp file + rename), JSON files and digests: a killed job never leaves a
half-written file that looks complete. No torch here (the report's env has none); tensor files
are lcsc.kernel.tensors."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError, InputError


@functools.cache
def _umask() -> int:
    """The process umask (reading it means setting it; done once, on the first write)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and str(path) not in str(exc):
            # disk full, permission denied, read-only file system: say which output failed
            if exc.errno is None:
                raise OSError(f"{exc} while writing {path}") from exc
            raise OSError(exc.errno, f"{exc.strerror or exc} (while writing it)", str(path)) from exc
        raise


def resolve_path(value: str | Path, key: str) -> Path:
    """`value` (a path the config gives as `key`) made absolute, with `~` and every symlink
    followed; a symlink loop or an unreadable part is a ConfigError naming the key."""
    try:
        return Path(value).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: Python 3.11's "Symlink loop from ..."
        raise ConfigError(
            f"{key}: {value} cannot be resolved ({first_line(exc)}); a symlink loop or an "
            "unreadable folder: fix the path"
        ) from None


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path`, with every symlink followed, lies in `folder` (itself resolved): a symlink
    loop or an unreadable part lies nowhere."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):
        return False


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temp files that a killed job left behind in `folder` (SIGKILL skips all cleanup)."""
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, fix: str = "restore it or rerun the stage that writes it", keys: tuple = ()):
    """The JSON in `path`; a truncated or foreign file raises InputError naming it (and `fix`).
    With `keys`, the file must hold an object with those keys."""
    try:
        with open(path, "rb") as fh:
            obj = json.loads(fh.read())
        if keys and not isinstance(obj, dict):
            raise InputError(f"{path}: holds a JSON {type(obj).__name__}, not the object this stage reads; {fix}")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise InputError(f"{path}: has no {', '.join(map(repr, missing))}; not the file this stage reads; {fix}")
        return obj
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}); {fix}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a JSON file (not UTF-8 text: {exc.reason} at byte {exc.start}); {fix}") from exc


def copy_file(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def reading(path: str | Path, what: str, fix: str):
    """Read `path` as `what` inside this block: any failure to parse it becomes one InputError,
    `<path>: not <what> (<reason>); <fix>`. An InputError raised inside passes as it is, and so does
    an OSError that names its file (unreadable: main reports the file and the reason)."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename:
            raise
        # the reason's first sentence: numpy's next one suggests loading a pickle unsafely
        reason = f"no {exc} in it" if isinstance(exc, KeyError) else first_line(exc).split(". ")[0].rstrip(".")
        raise InputError(f"{path}: not {what} ({reason}); {fix}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def json_digest(obj) -> str:
    """The sha256 of an object's JSON with sorted keys: the same for equal settings on any machine."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
