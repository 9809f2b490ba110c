"""conda cannot run here, so the env files are checked against the tested pins instead."""

import re

import yaml

from conftest import REPO


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_conda_envs_match_constraints():
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        pins = _pins(pip)
        assert len(pins) == len(pip), f"{env.name}: every pip entry must be pinned with =="
        for name, version in pins.items():
            assert constraints.get(name) == version, (
                f"{env.name}: {name}=={version} but constraints.txt has {constraints.get(name)}"
            )


def test_every_rule_env_exists_and_covers_its_imports():
    torch_env = yaml.safe_load((REPO / "envs" / "torch.yaml").read_text())
    pip = " ".join(next(d["pip"] for d in torch_env["dependencies"] if isinstance(d, dict)))
    for pkg in ("torch", "nevergrad", "mlflow", "safetensors", "scikit-learn", "tqdm"):
        assert pkg in pip
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name} names missing env {env}"


def test_pyproject_covers_constraints():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ]", d)[0].lower() for d in deps}
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    for name in names:
        assert name in constraints, f"{name} is a dependency but has no tested pin"


def test_the_snakefiles_min_version_is_the_packages_lower_bound():
    required = re.search(r'min_version\("([\d.]+)"\)', (REPO / "Snakefile").read_text()).group(1)
    bound = re.search(r'"snakemake>=([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    pinned = _pins((REPO / "constraints.txt").read_text().splitlines())["snakemake"]
    assert required == bound, f"Snakefile min_version {required}, pyproject.toml snakemake>={bound}"
    assert tuple(map(int, pinned.split("."))) >= tuple(map(int, required.split(".")))
