"""Every command in README.md, config/README.md and docs/*.md runs as written, checked the cheapest
real way: cheap ones run (`--help`, Snakemake dry runs, make's dry run), long ones have their
arguments parsed by the program's own parser and their config validated. A command the table
below does not know fails the test, so a new command in the docs gets a check too."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent
DOCS = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    """(first doc that has it, command) for every distinct command in a ```bash block."""
    out: dict[str, str] = {}
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                if line.strip():
                    out.setdefault(line.strip(), doc.relative_to(REPO).as_posix())
    return [(doc, command) for command, doc in out.items()]


COMMANDS = _commands()


def _run(argv, cwd=REPO, timeout=300, env=None) -> subprocess.CompletedProcess:
    res = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert res.returncode == 0, f"{' '.join(argv)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def _make(target: str, tmp_path: Path) -> None:
    """make's dry run: the target exists and its recipe parses (nothing is executed)."""
    out = _run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"]).stdout
    assert "pip install" in out or "snakemake" in out or "pytest" in out, out


def _snakemake(args: list[str], tmp_path: Path) -> None:
    """Snakemake's own parser takes the arguments; without conda (none here), a dry run of the same
    command in an empty working folder builds the whole DAG."""
    from snakemake.cli import get_argument_parser

    get_argument_parser().parse_args(args)
    if "--use-conda" in args:
        return  # conda is not installable on this machine; the rest of the command is dry-run elsewhere
    _run(
        [str(BIN / "snakemake"), *args, "-n", "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile")],
        env={"ACCOUNT": "acct", "PARTITION": "part"},
    )


def _lcsc(args: list[str], tmp_path: Path) -> None:
    """`--help` runs; any other call has its flags parsed by lcsc's parser and its config read."""
    if "--help" in args:
        assert "usage: lcsc" in _run([sys.executable, "-m", "lcsc", *args]).stdout
        return
    from lcsc.cli import build_parser
    from lcsc.cli.commands import _config

    parsed = build_parser().parse_args(args)
    if "--config" in args:
        assert (REPO / parsed.config).is_file()
        _config(parsed)


def _bench(script: str, args: list[str], tmp_path: Path) -> None:
    """The script's own argument parser (read from its code: running it imports torch, seconds a
    script) declares every flag the docs pass."""
    import ast

    tree = ast.parse((REPO / "bench" / script).read_text())
    flags = {
        a.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
        for a in node.args
        if isinstance(a, ast.Constant) and str(a.value).startswith("--")
    }
    assert flags, f"bench/{script} declares no flags"
    for flag in (a for a in args if a.startswith("--")):
        assert flag in flags, (script, flag, sorted(flags))


def _stage_times(args: list[str], tmp_path: Path) -> None:
    _run(["bash", "-n", "bench/stage_times.sh"])
    assert (REPO / args[0]).is_file()


def _pip(args: list[str], tmp_path: Path) -> None:
    import tomllib

    assert args[:3] == ["install", "-c", "constraints.txt"] and (REPO / "constraints.txt").is_file()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert args[3:] == ["-e", ".[test]"] and "test" in extras


def _demo_run(args: list[str], tmp_path: Path) -> None:
    """The offline stand-in for a diffusers training run (tests/foreign_trails.py) takes the arguments."""
    from foreign_trails import parse_args

    parse_args(args)


CHECKS = [
    (r"make (run|test|test-fast|lint)", lambda m, tmp: _make(m[1], tmp)),
    (r"\.venv/bin/snakemake (.+)", lambda m, tmp: _snakemake(shlex.split(m[1]), tmp)),
    (r"\.venv/bin/python -m lcsc (.+)", lambda m, tmp: _lcsc(shlex.split(m[1]), tmp)),
    (r"\.venv/bin/python bench/(\w+\.py) (.+)", lambda m, tmp: _bench(m[1], shlex.split(m[2]), tmp)),
    (r"PYTHON=\S+ bench/stage_times\.sh (.+)", lambda m, tmp: _stage_times(shlex.split(m[1]), tmp)),
    (r"\.venv/bin/pip (.+)", lambda m, tmp: _pip(shlex.split(m[1]), tmp)),
    (r"\.venv/bin/python tests/foreign_trails\.py (.+)", lambda m, tmp: _demo_run(shlex.split(m[1]), tmp)),
]


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 10 and ("README.md", "make run") in COMMANDS and ("README.md", "make test") in COMMANDS


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_command_runs_as_written(doc, command, tmp_path):
    for pattern, check in CHECKS:
        m = re.fullmatch(pattern, command)
        if m:
            check(m, tmp_path)
            return
    pytest.fail(f"{doc}: no check knows the command {command!r}; add one to tests/test_docs.py")
