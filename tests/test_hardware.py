"""hardware.py: every hardware profile, and what detect() finds on this machine."""
from __future__ import annotations

import pytest
import torch

from tutorforge import hardware

GB = 2**30


@pytest.mark.parametrize("name", list(hardware.PROFILES))
def test_every_hardware_profile(name):
    hw = hardware.profile(name)
    device, memory, ram, bf16, _ = hardware.PROFILES[name]
    assert hw.name == name and hw.device == device
    if device == "cpu":
        assert hw.memory_gb == hw.ram_gb == pytest.approx(hardware.machine_ram_gb())
        assert hw.bf16 == hardware.cpu_has_bf16()
    else:
        assert hw.memory_gb == memory and hw.ram_gb == ram and hw.bf16 is bf16
        assert int(name.rsplit("-", 1)[1].removesuffix("gb")) == pytest.approx(hw.memory_gb, abs=1.1)
    assert hardware.profile(name, ram_gb=7.5).ram_gb == 7.5


def test_detects_this_machine():
    hw = hardware.detect()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        assert hw.device == "cuda" and hw.memory_gb == pytest.approx(props.total_memory / GB)
    else:
        assert (hw.name, hw.device) == ("cpu", "cpu")
        assert hw.memory_gb == pytest.approx(hardware.machine_ram_gb()) and hw.memory_gb > 1
