"""Shared fixtures. A skipped test fails the run: in CI nothing may be skipped for a missing
dependency or file (install it, or the test fails). A test that uses the bundled model (the
`bundled` or `adapter` fixture, or base_model smollm2 resolved in process) must be marked slow, or
it fails: the fast tier (`make test-fast`) never waits for the model's conversion. Tests that need
only its tokenizer take `bundled_tokenizer` (a fresh tokenizer) or `bundled_tokenizer_dir`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0):
    # `make test` runs the tests in parallel workers (pytest-xdist): each gets its share of the CPUs
    # for PyTorch and llama.cpp, and the processes its tests start inherit it
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    os.environ.setdefault("TUTORFORGE_THREADS", share)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


def tutorforge_imports(module: str, *, top_only: bool = False) -> set[str]:
    """The tutorforge modules (as "tutorforge.NAME") that src/tutorforge/<module>.py imports: inside
    functions and `if TYPE_CHECKING:` too, or with top_only the module's own top-level statements."""
    import ast

    tree = ast.parse((ROOT / "src" / "tutorforge" / f"{module}.py").read_text())
    nodes = tree.body if top_only else list(ast.walk(tree))
    names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
    names |= {f"tutorforge.{a.name}" for n in nodes
              if isinstance(n, ast.ImportFrom) and n.module == "tutorforge" for a in n.names}
    return {name for name in names if name.startswith("tutorforge.")}
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


SLOW_FIXTURES = ("bundled", "adapter")  # they load the bundled model's weights: slow tests only
_unmarked = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the bundled model (directly or through another fixture) without the slow
    mark fails at setup: the fast tier (-m "not slow") never waits for the model's conversion."""
    for item in items:
        used = [name for name in SLOW_FIXTURES if name in getattr(item, "fixturenames", ())]
        if used and item.get_closest_marker("slow") is None:
            item.stash[_unmarked] = used


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up: the conversion is never started
def pytest_runtest_setup(item: pytest.Item) -> None:
    if used := item.stash.get(_unmarked, None):
        pytest.fail(f"{item.nodeid} uses the fixture(s) {', '.join(used)}, which load the bundled model: "
                    "mark it @pytest.mark.slow, or use bundled_tokenizer / bundled_tokenizer_dir when "
                    "only the tokenizer is needed", pytrace=False)


@pytest.fixture(autouse=True)
def _fast_tests_never_convert_the_bundled_model(request, monkeypatch):
    """The same rule for a test that reaches the bundled model through the code it calls (base_model:
    smollm2 resolved in process): outside the slow mark, converting the bundled GGUF fails the test."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import tutorforge.models as models

    convert = models.gguf_to_checkpoint

    def guarded(gguf: Path) -> Path:
        if Path(gguf).resolve() == models.bundled_gguf().resolve():
            pytest.fail(f"{request.node.nodeid} resolves the bundled model (its ~40 s conversion on a fresh "
                        "cache): mark it @pytest.mark.slow, or give it a tiny model built in the test",
                        pytrace=False)
        return convert(gguf)

    monkeypatch.setattr(models, "gguf_to_checkpoint", guarded)


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


def tutor_rows() -> list[dict]:
    """The shipped Python-tutor dataset's rows (instruction, input, output), as text for tests."""
    import json

    return [json.loads(line) for line in (ROOT / "data" / "python_tutor.jsonl").read_text().splitlines()]


def parity_texts(tokenizer) -> list[str]:
    """Over 1,000 texts to compare two tokenizers on: the shipped dataset's answers, inputs and
    instructions, digits, unicode, tabs and runs of spaces, and chat-template renderings of 300
    conversations (half with a system turn, training and generation forms)."""
    rows = tutor_rows()
    texts = [r["output"] for r in rows] + [r["input"] for r in rows if r["input"]]
    texts += [r["instruction"] for r in rows[:300]]
    texts += [  # digits, unicode, tabs and runs of spaces
        "0", "42", "3.14159", "1,000,000", "2024-11-28T04:34:13Z", "+44 20 7946 0958", "x = 10**18 + 7",
        "0x1F 0o17 0b1010 1e-9 6.02e23", "version 3.11.7", "١٢٣ ٤٥٦", "Ⅻ ½ ² ³",
        "naïve café résumé coöperate", "日本語のテキスト", "中文字符测试", "한국어 텍스트", "Ελληνικά", "русский",
        "emoji 🤖🐍✨ flags 🇫🇷 family 👨‍👩‍👧", "zero\u200bwidth", "combining e\u0301", "שלום עולם", "مرحبا",
        "\t", "\t\tdouble tab", "a\tb\tc", "if x:\n\tpass", " ", "  ", "   x", "a" + " " * 7 + "b",
        " " * 12 + "indented", "line\n\n\n\nbreaks", "trailing   \n", "\r\nwindows\r\n", "",
    ]
    systems = [None, "You are a concise Python tutor."]
    for i, row in enumerate(rows[:300]):
        system = systems[i % 2]
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        texts.append(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
    return texts


@pytest.fixture(scope="session")
def bundled():
    """The bundled SmolLM2-135M-Instruct, converted once into the cache (~40 s on a fresh cache):
    only for tests marked slow (see pytest_collection_modifyitems)."""
    from tutorforge.models import resolve_base_model

    return resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def bundled_tokenizer_dir(tmp_path_factory) -> Path:
    """A directory holding only the bundled model's tokenizer, read from its GGUF as the conversion
    reads it (models.gguf_to_checkpoint), without converting the weights (~9 s on 2 cores, not ~40 s);
    test_models checks it holds the converted checkpoint's tokenizer files."""
    from tutorforge.gguf_tokenizer import load_gguf_tokenizer
    from tutorforge.models import bundled_gguf

    out = tmp_path_factory.mktemp("bundled-tokenizer")
    load_gguf_tokenizer(bundled_gguf()).save_pretrained(out)
    return out


@pytest.fixture
def bundled_tokenizer(bundled_tokenizer_dir):
    """The bundled model's tokenizer, a fresh copy for each test (a test may change its template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_tokenizer_dir)


def random_lora(model, *, r: int, alpha: float, targets, std: float, seed: int):
    """`model` with a fresh LoRA adapter (peft) whose B matrices are drawn from N(0, std) instead of
    peft's zeros, so the adapter changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return peft


@pytest.fixture(scope="session")
def adapter(tmp_path_factory, bundled) -> Path:
    """A LoRA adapter on every linear layer of the bundled model, with non-zero updates."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32)
    peft = random_lora(model, r=8, alpha=16, targets="all-linear", std=0.01, seed=0)
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
