"""Which devices a stage computes on: `device`, and the devices of `search.devices`."""

import pytest
import torch

from lcsc.kernel.devices import check_compiler, resolve_device, search_devices
from lcsc.kernel.errors import ConfigError


def _gpus(monkeypatch, n: int) -> None:
    """Pretend torch sees `n` CUDA devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_resolve_device(monkeypatch):
    _gpus(monkeypatch, 0)
    assert resolve_device({"device": "cpu"}) == resolve_device({"device": "auto"}) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: 'cuda' was asked for but torch sees no GPU"):
        resolve_device({"device": "cuda"})
    _gpus(monkeypatch, 1)
    assert resolve_device({"device": "auto"}) == resolve_device({"device": "cuda"}) == torch.device("cuda")
    assert resolve_device({"device": "cpu"}) == torch.device("cpu")


def test_search_devices(monkeypatch):
    _gpus(monkeypatch, 2)
    cpu = torch.device("cpu")
    assert search_devices({"devices": "auto"}, cpu) == [cpu]
    assert search_devices({"devices": "auto"}, torch.device("cuda", 1)) == [torch.device("cuda", 1)]
    assert search_devices({"devices": ["cpu", "cpu"]}, cpu) == [cpu, cpu]
    assert search_devices({"devices": ["cuda:0", "cuda:1"]}, cpu) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(
        ConfigError, match=r"search.devices: 'cuda:2' is not available here \(2 CUDA devices visible\)"
    ):
        search_devices({"devices": ["cuda:0", "cuda:2"]}, cpu)
    with pytest.raises(ConfigError, match=r"search.devices: 'gpu0' is not a torch device name"):
        search_devices({"devices": ["cpu", "gpu0"]}, cpu)
    _gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match=r"search.devices: 'cuda' is not available here \(0 CUDA devices visible\)"):
        search_devices({"devices": ["cuda"]}, cpu)


def test_search_compile_is_refused_on_several_devices_and_on_a_cpu_without_a_compiler(monkeypatch):
    import shutil

    check_compiler({"compile": False}, ["cpu", "cpu"])  # eager: any devices
    with pytest.raises(
        ConfigError,
        match=r"^search.compile: true with 2 search devices; torch.compile is not "
        r"thread-safe",
    ):
        check_compiler({"compile": True}, ["cuda:0", "cuda:1"])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^search.compile: torch.compile on the CPU needs a C\+\+ compiler"):
        check_compiler({"compile": True}, ["cpu"])
    check_compiler({"compile": True}, ["cuda:0"])  # a GPU compiles through triton, no C++ compiler
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name == "clang++" else None)
    check_compiler({"compile": True}, ["cpu"])
