"""export.py and verify.py: GGUF files that llama.cpp loads, tokenizes and predicts with like PyTorch."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tutorforge.errors import UserError
from tutorforge.export import Source, export_model
from tutorforge.gguf_write import llama3_rope_factors, permute_qk, write_gguf
from tutorforge.quantize import quantize


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bundled, adapter):
    """f16, q8_0 and q4_k_m written in one streaming pass from base + adapter, and verified."""
    from tutorforge.export import default_verify_rows

    out = tmp_path_factory.mktemp("gguf")
    report = export_model(Source(bundled.path, adapter), out, name="tutor", quantizations=("q8_0", "q4_k_m"),
                          verify_rows=default_verify_rows()[:40])
    return out, report


@pytest.mark.slow
def test_exports_load_tokenize_and_predict_like_pytorch(exported):
    out, report = exported
    assert set(report["files"]) == {"f16", "q8_0", "q4_k_m"}
    assert not list(out.glob(".*"))  # no temporary files left
    assert not (out / "merged").exists()  # one pass: no merged checkpoint on disk
    v = report["verification"]
    for kind in ("f16", "q8_0", "q4_k_m"):
        assert v[kind]["tokenization_mismatches"] == 0 and v[kind]["texts_tokenized"] >= 1000
        assert v[kind]["positions"] >= 2000
    assert v["f16"]["top1_agreement"] >= 0.99
    assert v["q8_0"]["top1_agreement"] >= 0.95
    assert v["q4_k_m"]["perplexity"] < v["f16"]["perplexity"] * 1.15
    assert report["sizes_mib"]["q4_k_m"] < report["sizes_mib"]["q8_0"] < report["sizes_mib"]["f16"]
    assert json.loads((out / "export.json").read_text())["files"] == report["files"]


def test_a_broken_export_fails_and_a_lossy_k_quant_warns():
    from tutorforge.verify import Verification, failures, quality_warnings

    good = {"f16": Verification("m.F16.gguf", 1200, 0, 2500, 0.995, 10.0),
            "q4_k_m": Verification("m.Q4_K_M.gguf", 1200, 0, 2500, None, 10.4)}
    assert failures(good) == [] and quality_warnings(good) == []
    lossy = {**good, "q4_k_m": Verification("m.Q4_K_M.gguf", 1200, 0, 2500, None, 10.6)}
    assert failures(lossy) == []
    assert quality_warnings(lossy)[0].startswith("q4_k_m: perplexity 10.600 is 6.0% above f16's 10.000")
    broken = {"f16": Verification("m.F16.gguf", 1200, 3, 2500, 0.98, 10.0),
              "q8_0": Verification("m.Q8_0.gguf", 1200, 0, 2500, 0.90, 10.1)}
    assert failures(broken) == ["f16: 3 of 1200 texts tokenize differently", "f16: top-1 agreement 98.00% < 99%",
                                "q8_0: top-1 agreement 90.00% < 97%"]


@pytest.mark.slow
def test_our_q8_0_is_as_good_as_llama_cpp_quantizer(exported, bundled, adapter, tmp_path):
    """q8_0 written by tutorforge agrees with PyTorch as well as llama.cpp's own q8_0 of the same
    f16 file (on this 576-wide model both sit near 96%: llama.cpp quantises activations to 8 bits)."""
    import llama_cpp
    from transformers import AutoTokenizer

    from tutorforge import verify
    from tutorforge.export import default_verify_rows

    out, report = exported
    theirs = tmp_path / "llamacpp.Q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(report["files"]["f16"].encode(), str(theirs).encode(), params) == 0
    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    texts, sequences = verify.probe_texts(tokenizer, default_verify_rows()[:40], None)
    with verify.reference_model(Path(bundled.path), adapter, scratch=tmp_path / "scratch") as model:
        reference = verify.reference_predictions(model, sequences)
    llama_q8 = verify.verify_gguf(theirs, tokenizer, texts[:10], sequences, reference)
    assert report["verification"]["q8_0"]["top1_agreement"] >= llama_q8.top1_agreement - 0.005


@pytest.mark.slow
def test_tokenizer_parity_on_1000_texts(exported, bundled):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from conftest import parity_texts
    from tutorforge.verify import tokenization_mismatches

    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    texts = parity_texts(tokenizer)
    assert len(texts) >= 1000
    llm = Llama(model_path=exported[1]["files"]["f16"], vocab_only=True, verbose=False)
    try:
        assert tokenization_mismatches(llm, tokenizer, texts) == 0
    finally:
        llm.close()


@pytest.mark.slow
def test_metadata_is_complete(exported):
    import gguf

    reader = gguf.GGUFReader(exported[1]["files"]["f16"])
    value = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.tok")
             and k != "tokenizer.ggml.merges"}
    assert value["general.architecture"] == "llama" and value["general.name"] == "tutor"
    assert (value["llama.block_count"], value["llama.embedding_length"],
            value["llama.feed_forward_length"]) == (30, 576, 1536)
    assert (value["llama.attention.head_count"], value["llama.attention.head_count_kv"]) == (9, 3)
    assert value["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert value["llama.rope.dimension_count"] == 64 and value["llama.context_length"] == 8192
    assert value["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "smollm"
    assert (value["tokenizer.ggml.bos_token_id"], value["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert "<|im_start|>" in value["tokenizer.chat_template"]
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
    assert len(reader.fields["tokenizer.ggml.merges"].data) == 48900
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.29.ffn_down.weight" in names and len(names) == 272


@pytest.mark.slow
def test_tokenizer_written_from_the_hf_tokenizer(bundled, tmp_path):
    """A checkpoint with no source GGUF: tokens, merges and pre-tokenizer come from tokenizer.json."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from tutorforge.verify import tokenization_mismatches

    plain = tmp_path / "plain"
    shutil.copytree(bundled.path, plain, ignore=shutil.ignore_patterns("tutorforge.json"))
    path = write_gguf(Source(plain), tmp_path / "plain.F16.gguf", "f16")
    ours, source = tokenizer_fields(path), tokenizer_fields(bundled.gguf)
    # SpecialVocab's merges, special ids and chat template, the probe hash's pre-tokenizer: what
    # llama.cpp's converter wrote into the bundled GGUF, key by key (it also wrote add_space_prefix)
    assert ours.pop("tokenizer.chat_template") == (plain / "chat_template.jinja").read_text()
    source.pop("tokenizer.chat_template")
    assert source.pop("tokenizer.ggml.add_space_prefix") is False
    assert ours == source and len(ours["tokenizer.ggml.merges"]) == 48900
    assert (ours["tokenizer.ggml.pre"], ours["tokenizer.ggml.padding_token_id"]) == ("smollm", 2)
    llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        texts = ["12345 and 3.14", "def f(x):\n\treturn x  *  2", "café 日本語 🐍",
                 "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
        assert tokenization_mismatches(llm, AutoTokenizer.from_pretrained(plain), texts) == 0
    finally:
        llm.close()


def tokenizer_fields(path: Path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.")}


def test_the_pre_tokenizer_is_named_by_llama_cpp_probe_hash(bundled_tokenizer_dir, tmp_path, caplog):
    """llama.cpp's converter names a pre-tokenizer by the sha256 of the token ids of its probe text;
    SmolLM2's is SmolLM's. A hash not in the table falls back to tokenizer.json's rules, said in the
    log; a tokenizer neither names is refused."""
    from transformers import AutoTokenizer

    from tutorforge.gguf_vocab import PRE_TOKENIZER_HASHES, pre_tokenizer, probe_hash

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    assert PRE_TOKENIZER_HASHES[probe_hash(tokenizer)] == "smollm"
    assert pre_tokenizer(tokenizer, {}, bundled_tokenizer_dir) == "smollm"  # no rules to read: the hash names it
    small = words_tokenizer(tmp_path)
    byte_level = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "add_prefix_space": False}]}}
    assert pre_tokenizer(small, byte_level, tmp_path) == "smollm"
    assert re.search(r"probe hash [0-9a-f]{64} is not in llama.cpp's table; pre-tokenizer 'smollm' assumed",
                     caplog.text)
    with pytest.raises(UserError, match=r"tokenizer.json: its pre-tokenizer \(probe hash [0-9a-f]{64}\) is not"):
        pre_tokenizer(small, {"pre_tokenizer": {"type": "Whitespace"}}, tmp_path)


def test_each_families_splitting_rules_are_named_as_llama_cpp_names_them():
    """A vocabulary of its own with a family's splitting rules (tokenizer.json's pre_tokenizer) gets
    the name llama.cpp gives the family's real tokenizer (by hash), or the name of the same split
    (llama-bpe for DBRX's, OLMo 2's and Phi-4's Llama 3 regex; smollm for Granite 3's refact rules).
    GPT-4o's regex, which has Llama 3's \\p{N}{1,3}, is not taken for llama-bpe, and a case-split
    regex that is neither Tekken's nor GPT-4o's is not named at all."""
    from test_families import SPLIT_RULES
    from tutorforge.gguf_vocab import pre_tokenizer_by_rules

    def split(regex: str, **byte_level) -> dict:
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False,
             **byte_level}]}}

    contraction = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    gpt4o = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + contraction
             + r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + contraction
             + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    granite = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [  # ibm-granite/granite-3.x, SmolLM
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}}
    named = {name: pre_tokenizer_by_rules(split(regex)) for name, regex in SPLIT_RULES.items()}
    assert named == {"llama-bpe": "llama-bpe", "qwen2": "qwen2", "tekken": "tekken"}
    assert pre_tokenizer_by_rules(split(gpt4o)) == "gpt-4o"
    assert pre_tokenizer_by_rules(granite) == "smollm"
    # the same regexes otherwise: byte-level mapping that splits again (GPT-2's regex) is not Tekken's
    assert pre_tokenizer_by_rules(split(SPLIT_RULES["tekken"], use_regex=True)) is None
    tiny_aya = split(gpt4o)  # GPT-4o's regex after a split of its own (numbers grouped from the right)
    tiny_aya["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Split", "pattern": {
        "Regex": r"\d{1,3}(?=(?:\d{3})*\b)"}, "behavior": "Isolated", "invert": False})
    assert pre_tokenizer_by_rules(tiny_aya) is None
    assert pre_tokenizer_by_rules(split(gpt4o.replace(r"\p{N}{1,3}", r"\p{N}"))) is None


def words_tokenizer(directory: Path):
    """A small BPE tokenizer whose merges are saved as pairs, one with a space inside a token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<s>", "</s>", "h", "i", "a", " b", "b", " ", "hi", "a b"])}
    core = Tokenizer(models.BPE(vocab, [("h", "i"), ("a", " b")]))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_merges_saved_as_pairs_with_spaces_are_written_as_llama_cpp_reads_them(tmp_path):
    """transformers saves merges as pairs, so a token may hold a space; gguf-py's SpecialVocab writes
    that space as U+0120 (llama.cpp splits a merge at its one real space), where ' '.join did not."""
    from test_merge import tiny_llama

    words_tokenizer(tmp_path / "tokenizer")
    assert json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())["model"]["merges"][1] == ["a", " b"]
    model = tiny_llama(tmp_path / "model", tmp_path / "tokenizer", tied=False)
    fields = tokenizer_fields(write_gguf(Source(model), tmp_path / "m.F32.gguf", "f32"))
    assert fields["tokenizer.ggml.merges"] == ["h i", "a \u0120b"]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (0, 1)
    assert fields["tokenizer.ggml.pre"] == "smollm" and len(fields["tokenizer.ggml.tokens"]) == 10


def test_an_embedding_lora_is_in_the_streamed_gguf(bundled_tokenizer_dir, tmp_path):
    """A LoRA on embed_tokens (lora_embedding_A/B) goes into token_embd: llama.cpp's f32 file
    predicts what the adapted PyTorch model does, which is not what the base predicts."""
    from transformers import AutoTokenizer

    from test_merge import embedding_adapter, tiny_llama
    from tutorforge import verify
    from tutorforge.export import default_verify_rows

    base = tiny_llama(tmp_path / "base", bundled_tokenizer_dir, tied=False)
    adapted = embedding_adapter(base, tmp_path / "adapter", embedding_only=True).merge_and_unload()
    path = write_gguf(Source(base, tmp_path / "adapter"), tmp_path / "m.F32.gguf", "f32")
    tokenizer = AutoTokenizer.from_pretrained(base)
    sequences = [tokenizer(r.output)["input_ids"][:96] for r in default_verify_rows()[:6]]
    expected = verify.reference_predictions(adapted, sequences)
    with verify.reference_model(base, None, scratch=tmp_path / "scratch") as plain:
        before = verify.reference_predictions(plain, sequences)
    changed = np.mean(np.concatenate([a != b for a, b in zip(expected, before, strict=True)]))
    assert changed > 0.3, changed  # the embedding update changes the predictions
    result = verify.verify_gguf(path, tokenizer, ["hello world"], sequences, expected)
    assert result.positions >= 500 and result.top1_agreement >= 0.99, result


def test_the_shipped_lessons_are_the_dataset(tmp_path):
    """The lessons inside the package (verification text of an installed tutorforge) are
    data/python_tutor.jsonl's rows, all of them, in order."""
    from conftest import tutor_rows
    from tutorforge.export import default_verify_rows

    rows = default_verify_rows()
    assert [(r.instruction, r.input, r.output) for r in rows] == [
        (r["instruction"], r["input"], r["output"]) for r in tutor_rows()]
    assert len(rows) == 400


@pytest.mark.slow
def test_a_killed_export_leaves_nothing_and_a_rerun_succeeds(bundled, tmp_path, monkeypatch):
    import tutorforge.gguf_write as ex

    real, calls = ex._to_ggml, []

    def dies(tensor, kind, *args):
        calls.append(kind)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(tensor, kind, *args)

    monkeypatch.setattr(ex, "_to_ggml", dies)
    target = tmp_path / "m.F16.gguf"
    with pytest.raises(KeyboardInterrupt):
        write_gguf(Source(bundled.path), target, "f16")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ex, "_to_ggml", real)
    assert write_gguf(Source(bundled.path), target, "f16").stat().st_size > 250 << 20


def test_a_failed_quantization_removes_its_partial_file(tmp_path, capfd):
    broken = tmp_path / "broken.F16.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 4096)
    with pytest.raises(UserError, match="quantizer failed .* its last words: .*\\S"):
        quantize(broken, tmp_path / "broken.Q4_K_M.gguf", "q4_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.F16.gguf", "broken.Q4_K_M.log"]
    assert "llama_model_loader" in (tmp_path / "broken.Q4_K_M.log").read_text()
    assert capfd.readouterr().err == ""  # llama.cpp's log goes to the file, not over the run's output


def test_quantizer_fallbacks_are_summed_up_in_one_clause():
    from tutorforge.quantize import fallback_summary

    pieces = ["[  14/ 272] blk.1.attn_q.weight - [ 576, 576, 1, 1], type = f16, ", "converting to q4_K .. ",
              "warning: blk.1.attn_q.weight                  - ncols    576 not divisible by 256 (required for ",
              "type    q4_K) -> falling back to    q5_0\n",
              "warning: blk.1.attn_v.weight  - ncols    576 not divisible by 256 (required for type q6_K) -> "
              "falling back to    q8_0\n",
              "warning: blk.2.attn_q.weight  - ncols    576 not divisible by 256 (required for type q4_K) -> "
              "falling back to    q5_0\n", "size =     0.63 MiB ->     0.34 MiB\n"]
    assert fallback_summary(pieces) == ("; 3 tensors kept a simpler type (width 576 is not a multiple of 256): "
                                        "2 x q5_0, 1 x q8_0")
    assert fallback_summary(["[   1/ 272] token_embd.weight ... size = 54 MiB\n"]) == ""


@pytest.mark.slow
def test_disk_space_is_checked_before_writing(bundled, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(UserError, match=r"the f16 GGUF needs 0.\d GiB but only 0.0 GiB are free"):
        write_gguf(Source(bundled.path), tmp_path / "m.F16.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unsupported_outputs_are_refused(bundled, tmp_path):
    with pytest.raises(UserError, match="is not written directly"):
        write_gguf(Source(bundled.path), tmp_path / "x.gguf", "q4_k_m")
    with pytest.raises(UserError, match="is not one of"):
        quantize(tmp_path / "x.gguf", tmp_path / "y.gguf", "q3_weird")


def test_permute_qk_interleaves_rotary_halves():
    weight = torch.arange(8 * 2, dtype=torch.float32).reshape(8, 2)  # 2 heads of 4 rows
    out = permute_qk(weight, 2)
    # per head, rows [0 1 | 2 3] (first half | second half) become [0 2 1 3]
    assert out[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]


def test_llama3_rope_factors():
    config = {"rope_theta": 500000.0, "hidden_size": 4096, "num_attention_heads": 32,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    factors = llama3_rope_factors(config)
    assert factors.shape == (64,) and factors[0] == 1.0 and factors[-1] == 8.0
    assert np.all(np.diff(factors) >= 0)
    assert llama3_rope_factors({"hidden_size": 64, "num_attention_heads": 2}) is None
    # as transformers 5 saves the same config (a full fine-tune's model/): in rope_parameters
    saved = {"hidden_size": 4096, "num_attention_heads": 32,
             "rope_parameters": {**config["rope_scaling"], "rope_theta": 500000.0}}
    assert np.array_equal(llama3_rope_factors(saved), factors)


def test_a_failed_verification_stops_with_what_failed_and_where(tmp_path):
    from tutorforge.export import check_verification

    check_verification({"failures": []}, tmp_path)  # nothing failed: nothing raised
    with pytest.raises(UserError) as err:
        check_verification({"failures": ["f16: top-1 agreement 91.00% < 99%"]}, tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: export verification failed:\n  f16: top-1 agreement 91.00% < 99%")
    assert "do not deploy them" in str(err.value) and str(tmp_path / "export.json") in str(err.value)


@pytest.mark.slow
def test_a_disk_that_fills_mid_export_says_so_and_leaves_nothing(bundled, tmp_path, monkeypatch):
    import errno

    import gguf

    real, calls = gguf.GGUFWriter.write_tensor_data, []

    def fills(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fills)
    with pytest.raises(UserError, match=r"the disk filled up while writing the f16 GGUF m.F16.gguf \(\d+ MiB free"):
        write_gguf(Source(bundled.path), tmp_path / "m.F16.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_never_writes_over_what_it_did_not_make(bundled, tmp_path, capsys):
    from tutorforge import cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.F16.gguf").write_bytes(b"my own model")
    before = sorted(p.name for p in bundled.path.iterdir())
    for out, says in ((mine, "not empty .*model.F16.gguf.* not written by tutorforge"),
                      (bundled.path, "is .*, which this command reads from"),
                      (bundled.path / "gguf", "lies inside")):
        assert cli.main(["export", "--base", str(bundled.path), "--out", str(out), "--quantize", "f16",
                         "--no-verify"]) == 2
        assert re.search(says, capsys.readouterr().err)
    assert (mine / "model.F16.gguf").read_bytes() == b"my own model" and len(list(mine.iterdir())) == 1
    assert sorted(p.name for p in bundled.path.iterdir()) == before


@pytest.mark.slow
def test_after_training_again_export_makes_new_files_that_verify(bundled, adapter, tmp_path, capsys):
    """Retrain into the same output_dir (another adapter, same place): export neither reuses the old
    GGUF nor reads the old merged/; its new file is the new model's, verified; package refuses the
    stale GGUF until then."""
    import dataclasses
    import hashlib

    import safetensors.torch

    from tutorforge import cli
    from tutorforge.config import load_config
    from tutorforge.export import default_verify_rows

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    run = tmp_path / "run"
    config = dataclasses.asdict(load_config(Path(__file__).parent.parent / "recipes" / "python-tutor-smollm2-cpu.yml"))
    config["base_model"], config["output_dir"] = str(bundled.path), str(run)
    config["tutorforge"]["ollama"]["quantization"] = "f16"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": config}, default=list))
    shutil.copytree(adapter, run / "adapter")
    (run / "heldout.jsonl").write_text("".join(json.dumps(vars(r)) + "\n" for r in default_verify_rows()[:8]))
    assert cli.main(["export", str(run), "--quantize", "f16"]) == 0
    gguf = run / "gguf" / "model.F16.gguf"
    first = sha(gguf)
    assert cli.main(["merge", str(run)]) == 0  # merged/ from the first adapter

    weights = safetensors.torch.load_file(run / "adapter" / "adapter_model.safetensors")  # training again
    safetensors.torch.save_file({k: -3 * v if "lora_B" in k else v for k, v in weights.items()},
                                run / "adapter" / "adapter_model.safetensors")
    capsys.readouterr()
    assert cli.main(["package", str(run)]) == 2
    assert "exported from another model than" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--quantize", "f16"]) == 0
    second = sha(gguf)
    report = json.loads((run / "gguf" / "export.json").read_text())
    assert second != first and report["failures"] == []
    assert report["verification"]["f16"]["top1_agreement"] >= 0.99
    fresh = tmp_path / "fresh"  # the same model exported from scratch: byte for byte what export wrote
    export_model(Source(bundled.path, run / "adapter"), fresh, name="model", quantizations=("f16",))
    assert sha(fresh / "model.F16.gguf") == second
    assert (run / "gguf" / "Modelfile").is_file()  # written again, for the new GGUF
    assert cli.main(["merge", str(run)]) == 0  # merged/ rebuilt for the new adapter...
    stamp = gguf.stat().st_mtime_ns
    assert cli.main(["export", str(run), "--quantize", "f16", "--no-verify"]) == 0
    assert gguf.stat().st_mtime_ns == stamp and sha(gguf) == second  # ...which is the same model: kept
