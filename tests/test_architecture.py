"""The architecture holds: import-linter's contracts (and that they catch a stage importing
another) and variant names routed in one module only. (Short functions are ruff's PLR0915, in
`make lint`.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"},
    )


def test_import_contracts_are_kept():
    res = _lint(REPO, REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in (
        "cli above stages above kernel",
        "stages are independent of each other",
        "the report, the config and MLflow tracking run without torch",
        "model families are independent of each other",
    ):
        assert f"{name} KEPT" in res.stdout, res.stdout


def test_a_stage_importing_another_breaks_a_contract(tmp_path):
    """The check can fail: a copy of the package where evaluate imports search does."""
    shutil.copytree(REPO / "lcsc", tmp_path / "lcsc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    evaluate = tmp_path / "lcsc" / "stages" / "evaluate.py"
    evaluate.write_text(
        evaluate.read_text().replace(
            "from ..kernel import variants\n", "from ..kernel import variants\nfrom . import search\n"
        )
    )
    res = _lint(tmp_path, tmp_path)
    assert res.returncode != 0
    assert "stages are independent of each other BROKEN" in res.stdout, res.stdout
    assert "lcsc.stages.evaluate -> lcsc.stages.search" in res.stdout, res.stdout


# What deciding a variant's weights by its name looks like: comparing it with a variant's name,
# testing its prefix or suffix, or indexing results by a literal variant name.
ROUTING = re.compile(
    r"""(==|!=|\bin)\s*\(?\s*["'](lcsc|last|greedy_soup)["']"""
    r"""|\.(startswith|endswith|removeprefix|removesuffix)\(\s*["'](ema_|_profile|lcsc)"""
    r"""|\[\s*["'](lcsc|last)["']\s*\]"""
)


def test_variant_names_are_routed_in_the_variants_module_only():
    allowed = {REPO / "lcsc" / "kernel" / "variants.py"}
    files = [*sorted((REPO / "lcsc").rglob("*.py")), *sorted((REPO / "workflow").rglob("*.smk")), REPO / "Snakefile"]
    found = [
        f"{path.relative_to(REPO)}:{i}: {line.strip()}"
        for path in files
        if path not in allowed
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if ROUTING.search(line)
    ]
    assert found == [], found
    # the pattern finds the routing the package had before lcsc/kernel/variants.py held it
    for line in (
        'if wildcards.variant == "lcsc":',
        'emas = [v for v in results if v.startswith("ema_")]',
        'if variant.startswith("ema_") and not variant.endswith("_profile"):',
        'lcsc, last = results["lcsc"], results["last"]',
        'others = [v for v in results if v != "lcsc"]',
    ):
        assert ROUTING.search(line), line
