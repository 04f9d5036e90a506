"""llamacpp_tools.py: llama.cpp's converter and templates from the pinned sdist, fetched into the
cache whole; the converter's output written atomically; and tutorforge's own f16 GGUF of the
bundled model bit-identical, tensor by tensor, to the converter's."""
from __future__ import annotations

import numpy as np
import pytest

from tutorforge.errors import UserError


def test_the_tools_are_the_installed_versions_and_hold_what_export_and_tests_use():
    from tutorforge.llamacpp_tools import model_template, tools_dir, version

    tools = tools_dir()
    assert tools.name == f"llama.cpp-tools-{version()}"
    for path in ("convert_hf_to_gguf.py", "conversion/qwen.py", "gguf-py/gguf/__init__.py", "LICENSE"):
        assert (tools / path).is_file(), path
    assert "<|im_start|>" in model_template("Qwen-Qwen3-0.6B")
    with pytest.raises(UserError, match="no such template; llama.cpp keeps: .*Qwen-Qwen3-0.6B"):
        model_template("no-such-model")


def test_a_failed_conversion_leaves_no_file_and_says_why(tmp_path):
    from tutorforge.llamacpp_tools import convert_checkpoint

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"architectures": ["FooForCausalLM"]}')
    out = tmp_path / "model.gguf"
    with pytest.raises(UserError, match=r"llama.cpp's converter failed \(exit 1\)"):
        convert_checkpoint(tmp_path / "model", out)
    assert not out.exists() and not list(tmp_path.glob(".*converting"))


@pytest.mark.slow  # the bundled model
def test_tutorforges_f16_of_the_bundled_model_is_the_converters_bit_for_bit(bundled, tmp_path):
    import gguf

    from tutorforge.gguf_write import Source, write_gguf
    from tutorforge.llamacpp_tools import convert_checkpoint

    ours = gguf.GGUFReader(write_gguf(Source(bundled.path), tmp_path / "ours.gguf", "f16"))
    theirs = gguf.GGUFReader(convert_checkpoint(bundled.path, tmp_path / "theirs.gguf", outtype="f16"))
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors) and len(mine) == 272
    for t in theirs.tensors:
        assert mine[t.name].tensor_type == t.tensor_type, t.name
        assert np.array_equal(np.asarray(mine[t.name].data), np.asarray(t.data)), t.name
    # metadata: every key the converter writes, with the same value, but the cosmetic ones
    cosmetic = {"general.name", "general.basename", "general.size_label", "general.file_type",
                "general.quantization_version", "general.type", "general.finetune"}
    fields = {k: f.contents() for k, f in ours.fields.items() if not k.startswith("GGUF.")}
    differ = [k for k, f in theirs.fields.items() if not k.startswith("GGUF.") and k not in cosmetic
              and fields.get(k) != f.contents()]
    assert differ == [], differ
