"""A checkpoint trail: the manifest that lists a training run's saved weights, and the stacked
[K, P] matrix that turns a coefficient vector c into weights theta = c @ W in one product."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import torch

# the flat space of a trail's checkpoints, where Trail.stack and the stages that combine read it
from .combine import ChunkedTrail, FlatLoader, check_state, combine, flatten_state  # noqa: F401
from .errors import TrailError
from .io import inside, read_json, sha256
from .models import imported_kind
from .tensors import load_tensors

MANIFEST_FORMAT = "lcsc-trail/1"
# A step must fit the int64 that numpy, torch and MLflow keep it in.
MAX_STEP = 2**63 - 1


@dataclass
class Trail:
    root: Path  # the manifest's folder: entries' `file`s are relative to it
    manifest: dict
    steps: list[int] = field(default_factory=list)
    # The folder every file lies in: `root`, or the one the manifest declares.
    files_root: Path | None = None
    # What entries' `file`s are relative to: `root`, or an imported run's folder.
    base: Path | None = None

    def __post_init__(self):
        if self.base is None:
            self.base = self.root

    @classmethod
    def open(cls, manifest_path: str | Path, verify: bool = True) -> Trail:
        """Read and check a manifest: every entry's file must lie inside the trail (see
        `_files_root`), and with `verify` exist and hold the bytes its sha256 says."""
        manifest_path = Path(manifest_path)
        manifest = read_json(manifest_path, fix="rerun the stage that wrote the trail (or pass the right --manifest)")
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
            raise TrailError(
                f"{manifest_path}: not an lcsc trail manifest (format {found!r}, not "
                f"{MANIFEST_FORMAT!r}); pass the manifest.json of a trail"
            )
        entries = _checked_entries(manifest_path, manifest)
        check_steps(manifest_path, [c["step"] for c in manifest["checkpoints"]])
        files_root = _files_root(manifest_path, manifest)
        # an imported trail's files stay in the training run's folder, relative to it
        base = files_root if imported_kind(manifest.get("kind", "dm")) else manifest_path.parent
        for where, entry in entries:
            file = Path(entry["file"])
            # Checked before any file is read: an absolute or `..` path in a damaged or hand-edited
            # manifest would otherwise point the stages at files outside the trail.
            if file.is_absolute() or not inside(base / file, files_root):
                raise TrailError(
                    f"{manifest_path}: {where} file {entry['file']!r} lies outside the trail's folder "
                    f"{files_root}; a manifest lists only files in its trail (rerun the stage that "
                    "wrote it)"
                )
        trail = cls(manifest_path.parent, manifest, [c["step"] for c in manifest["checkpoints"]], files_root, base)
        if verify:
            trail.verify()
        return trail

    def verify(self) -> None:
        """Every file the manifest lists exists and holds the bytes its sha256 says."""
        manifest_path = self.root / "manifest.json"
        imported = imported_kind(self.manifest.get("kind", "dm"))
        rerun = "rerun import_trail" if imported else "rerun the training (it resumes)"
        for _, entry in _checked_entries(manifest_path, self.manifest):
            path = self.base / entry["file"]
            if not path.exists():
                raise TrailError(f"{path}: listed in {manifest_path} but missing; restore it or {rerun}")
            if sha256(path) != entry["sha256"]:
                raise TrailError(
                    f"{path}: its sha256 differs from the one in {manifest_path}; the file was "
                    f"changed after the trail was written, or cut short: restore it or {rerun}"
                )

    def __len__(self) -> int:
        return len(self.manifest["checkpoints"])

    @property
    def model_config(self) -> dict:
        config = self.manifest.get("model_config")
        if not isinstance(config, dict):
            raise TrailError(
                f"{self.root / 'manifest.json'}: no model_config (the network the trail trains); "
                "the manifest is damaged: rerun the stage that wrote the trail"
            )
        return config

    @property
    def fingerprint(self) -> list[str]:
        """The checkpoints' sha256s: files computed from this trail record it and are checked on read."""
        return [c["sha256"] for c in self.manifest["checkpoints"]]

    def check_fingerprint(self, recorded: list[str] | None, path) -> None:
        if recorded != self.fingerprint:
            raise TrailError(
                f"{path}: computed from another checkpoint trail than {self.root / 'manifest.json'}; "
                "rerun the stage that wrote it"
            )

    def checkpoint_path(self, i: int) -> Path:
        return self.base / self.manifest["checkpoints"][i]["file"]

    def ema_paths(self) -> dict[float, Path]:
        return {e["decay"]: self.base / e["file"] for e in self.manifest.get("ema", [])}

    def stack(self, shapes: dict[str, tuple], device="cpu", dtype=torch.float32, load=load_tensors) -> torch.Tensor:
        """All checkpoints as rows of one [K, P] matrix, flattened in the order of `shapes`
        (the model's state_dict names and shapes, which every checkpoint must match), each read
        with `load(path)` (its model family's reader)."""
        rows = []
        for i in range(len(self)):
            sd = load(self.checkpoint_path(i))
            check_state(sd, shapes, self.checkpoint_path(i))
            rows.append(torch.cat([sd[k].reshape(-1).to(dtype) for k in shapes]))
        return torch.stack(rows).to(device)


def _checked_entries(manifest_path: Path, manifest: dict) -> list[tuple[str, dict]]:
    """(`checkpoints[i]` or `ema[i]`, entry) for every file the manifest lists, each checked to
    have the keys the stages read; TrailError naming the entry and the manifest otherwise."""
    out = []
    for key, needs in (
        ("checkpoints", {"file": str, "sha256": str, "step": int}),
        ("ema", {"file": str, "sha256": str, "decay": (int, float)}),
    ):
        # A trail may have no EMA copies (the list may be absent or empty), but never no checkpoints.
        items = manifest.get(key, [] if key == "ema" else None)
        if not isinstance(items, list) or (key == "checkpoints" and not items):
            raise TrailError(
                f"{manifest_path}: `{key}` is {'missing' if items is None else repr(items)[:40]}, not a "
                "list of files; the manifest is damaged: rerun the stage that wrote the trail"
            )
        for i, entry in enumerate(items):
            # bool is a subclass of int in Python: without the extra test `"step": true` would pass as a step.
            bad = [
                k
                for k, t in needs.items()
                if not isinstance(entry, dict) or not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
            ]
            if bad:
                raise TrailError(
                    f"{manifest_path}: {key}[{i}] has no valid {', '.join(bad)}; the manifest is "
                    "damaged: rerun the stage that wrote the trail"
                )
            out.append((f"{key}[{i}]", entry))
    return out


def check_steps(where, steps: list[int]) -> None:
    """A trail's steps strictly increase and fit in int64; their size is never used as a length."""
    for a, b in zip([None, *steps], steps):
        if b < 0 or b > MAX_STEP:
            raise TrailError(
                f"{where}: step {b} is not a training step (0 to 2^63 - 1); a file name's date or hash "
                "was read as the step: set trail.pattern to the part that counts the steps"
            )
        if a is not None and b <= a:
            raise TrailError(
                f"{where}: step {b} follows step {a}; a trail's steps must increase: rerun the stage that wrote it"
            )


def _files_root(manifest_path: Path, manifest: dict) -> Path:
    """The folder the manifest's files must lie in: its own folder, an imported trail's run folder
    (its absolute `root`), or, for a manifest that declares a relative `root` (a truncated trail:
    its base trail's folder), that folder, which must hold a trail manifest itself. A truncated
    manifest written before `root` was declared lies in the folder of its first file."""
    declared = manifest.get("root")
    if imported_kind(manifest.get("kind", "dm")):
        if not isinstance(declared, str) or not Path(declared).is_absolute() or not Path(declared).is_dir():
            raise TrailError(
                f"{manifest_path}: root {declared!r} is not the imported run's folder (an absolute "
                "path to an existing folder); rerun import_trail"
            )
        return Path(declared)
    if declared is None and "truncated_from" in manifest:
        declared = posixpath.dirname(str(manifest["checkpoints"][0]["file"])) or "."
    if declared is None or declared == ".":
        return manifest_path.parent
    if not isinstance(declared, str) or Path(declared).is_absolute():
        raise TrailError(
            f"{manifest_path}: root {declared!r} must be a path relative to the manifest's folder; "
            "rerun the stage that wrote the trail"
        )
    root = manifest_path.parent / declared
    base = read_json(root / "manifest.json") if (root / "manifest.json").is_file() else None
    if not isinstance(base, dict) or base.get("format") != MANIFEST_FORMAT:
        raise TrailError(
            f"{manifest_path}: root {declared!r} is not a trail's folder (no lcsc trail manifest in "
            f"{root}); rerun the stage that wrote the trail"
        )
    return root
