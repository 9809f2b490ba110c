"""Every rule of the workflow runs a stage module and has its entry in the SLURM profile, and the
other searches of search.repeats (rule `search_repeat`) ask for exactly what `search` asks for, in
the rules, in the profile and in docs/clusters.md's 8-GPU command (a repeat search given the
defaults' 2 hours would be killed where the first one runs for 12)."""

from __future__ import annotations

import re
import shlex

import yaml

from conftest import REPO

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


def _rules() -> dict[str, str]:
    """rule name -> its text (up to the next rule or the end of its file)."""
    out = {}
    for path in RULE_FILES:
        text = path.read_text()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"^[ \t]*rule (\w+):", text, re.M)]
        for (start, name), (end, _) in zip(starts, [*starts[1:], (len(text), "")]):
            out[name] = text[start:end]
    return out


RULES = _rules()


def _asks(text: str) -> str:
    """What a rule asks the scheduler for: its threads and resources directives, without comments."""
    lines = [re.sub(r"\s*#.*$", "", line).strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("threads:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("shell:"))
    return "\n".join(line for line in lines[start:end] if line)


def _gpu_rules() -> list[str]:
    return [name for name, text in RULES.items() if re.search(r"^\s*gpu=", text, re.M)]


def test_the_rules_are_found():
    assert {
        "train_dm",
        "train_cm",
        "import_trail",
        "search",
        "search_repeat",
        "evaluate",
        "export",
        "tabulate",
    } <= set(RULES)
    assert len(_gpu_rules()) >= 8


def test_every_rule_runs_a_stage_module():
    for name, text in RULES.items():
        command = re.search(r'"lcsc(?:_train \{resources\.processes\})? ([a-z0-9-]+) ', text)
        assert command, f"rule {name} runs no lcsc command"
        module = command.group(1).replace("-", "_")
        assert (REPO / "lcsc" / "stages" / f"{module}.py").is_file(), f"rule {name}: no stage lcsc/stages/{module}.py"


def test_every_rule_has_a_slurm_profile_entry():
    resources, threads = PROFILE["set-resources"], PROFILE["set-threads"]
    for name in RULES:
        entry = resources.get(name)
        assert entry and {"runtime", "mem_mb"} <= set(entry), f"rule {name}: no runtime and mem_mb in the profile"
    for name in _gpu_rules():  # a GPU job's CPUs are cpus_per_gpu; lcsc's threads must be as many
        assert "cpus_per_gpu" in resources[name], f"GPU rule {name}: no cpus_per_gpu in the profile"
        assert threads.get(name, 1) == resources[name]["cpus_per_gpu"], name
    assert set(resources) <= set(RULES) and set(threads) <= set(RULES)  # no entry for a rule that is gone


def test_a_repeat_search_asks_for_what_the_search_asks_for():
    assert _asks(RULES["search_repeat"]) == _asks(RULES["search"]) and "gpu=GPUS" in _asks(RULES["search"])
    for key in ("set-resources", "set-threads"):
        assert PROFILE[key]["search_repeat"] == PROFILE[key]["search"], key


def test_the_8_gpu_command_covers_every_rule_of_the_profile():
    text = (REPO / "docs" / "clusters.md").read_text()
    section = text.split("## A search on one 8-GPU node")[1]
    command = next(line for line in section.splitlines() if "--set-resources" in line and "--profile" in line)
    args = shlex.split(command)
    given = args[args.index("--set-resources") + 1 : args.index("--set-threads")]
    threads = dict(a.split("=") for a in args[args.index("--set-threads") + 1 :])
    resources: dict[str, dict[str, str]] = {}
    for item in given:
        rule, _, setting = item.partition(":")
        key, _, value = setting.partition("=")
        resources.setdefault(rule, {})[key] = value
    # the command replaces the profile's whole keys: every entry is repeated, the searches' changed
    for rule, entry in PROFILE["set-resources"].items():
        assert set(entry) <= set(resources.get(rule, {})), f"{rule}: {entry} not repeated in the 8-GPU command"
        if rule not in ("search", "search_repeat"):
            assert resources[rule] == {k: str(v) for k, v in entry.items()}, rule
    assert set(PROFILE["set-threads"]) <= set(threads)
    assert resources["search"]["gpu"] == "8" and resources["search_repeat"] == resources["search"]
    assert threads["search_repeat"] == threads["search"] == str(8 * int(resources["search"]["cpus_per_gpu"]))


def _stage(text: str) -> str:
    """The stage module a rule's shell command runs (`lcsc <stage> ...`), as a module name."""
    return re.search(r'"lcsc(?:_train \{resources\.processes\})? ([a-z0-9-]+) ', text).group(1).replace("-", "_")


def test_each_stage_has_one_set_of_facts_that_its_rule_and_command_read():
    """A rule runs the command of its stage, passes that stage's own config slice (STAGE_SECTIONS,
    the rerun trigger) and writes its log; the torch rules also a benchmark file. Every stage of
    STAGE_SECTIONS has its rule and its command, and the command's name is the module's."""
    from lcsc.cli.parser import COMMANDS
    from lcsc.stages import STAGE_SECTIONS

    commands = {name.replace("-", "_") for name, *_ in COMMANDS}
    slice_functions = {"search": "search_json", "train_cm": "train_cm_json"}
    for name, text in RULES.items():
        stage = _stage(text)
        assert stage in STAGE_SECTIONS and stage in commands, f"rule {name}: stage {stage} has no slice or command"
        cfg = re.search(r"^\s*cfg=(.+),$", text, re.M).group(1)
        assert cfg in (f'stage_json("{stage}")', f'model_json("{stage}")', slice_functions.get(stage)), name
        assert f'LAYOUT.log("{stage}"' in text, f"rule {name}: no log named for its stage"
        assert "> {log:q} 2>&1" in text and "tee" not in text, f"rule {name}: output not into its log"
        if "torch.yaml" in text and name != "truncate_trail":
            assert f'LAYOUT.benchmark("{stage}"' in text, f"rule {name}: no benchmark file"
    assert set(STAGE_SECTIONS) == {_stage(text) for text in RULES.values()}
    if "search_json" in slice_functions.values():  # search_json is the search stage's own slice
        assert 'return stage_json("search", wildcards.model)' in (REPO / "workflow/rules/common.smk").read_text()
