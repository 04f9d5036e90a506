"""Shared fixtures. A skipped test fails the run: in CI nothing may be skipped for a missing
dependency or file (install it, or the test fails)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
MISSION_CONFIG = """\
base_model: NousResearch/Meta-Llama-3-8B
adapter: qlora
load_in_4bit: true
sequence_len: 1024
sample_packing: true
lora_r: 32
lora_alpha: 16
lora_target_linear: true
micro_batch_size: 1
gradient_accumulation_steps: 8
num_epochs: 50
optimizer: adamw_bnb_8bit
learning_rate: 0.0002
"""

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped; nothing may be skipped: {', '.join(_skipped)}",
            red=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED_DATA / "code_alpaca_2k.json"
    assert path.is_file(), f"{path} is missing: tests read the shared Alpaca datasets from there"
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled():
    """The bundled SmolLM2-135M-Instruct, converted once into the cache."""
    from tutorforge.models import resolve_base_model

    return resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def adapter(tmp_path_factory, bundled) -> Path:
    """A LoRA adapter on every linear layer of the bundled model, with non-zero updates."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out)
    return out


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "config.yml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
