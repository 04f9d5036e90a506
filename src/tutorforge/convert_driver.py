"""llama.cpp's converter (convert_hf_to_gguf.py) run with tutorforge's two additions: a LoRA adapter
merged into the base tensors as the converter reads them (one pass: no merged checkpoint on disk),
and the family fixes of FIXES (what the converter leaves out of a family's GGUF: Gemma 3's attention
scale and layer pattern), and a BPE pre-tokenizer named from its rules where its hash is unknown.

    python -m tutorforge.convert_driver MODEL_DIR OUTFILE OUTTYPE [--base DIR --adapter DIR]

Run by llamacpp_tools.convert_checkpoint in its own process, with llama.cpp's gguf-py and the
converter first on the path (this module imports no other gguf). MODEL_DIR is what the converter
reads (config, tokenizer, weights); with an adapter it is llamacpp_tools' staging folder: the base's
files, the run's tokenizer, and links to the base's weights (BASE, whose tensors are checked against
the adapter as merge does).

How the merge goes in: the converter indexes each checkpoint tensor as a lazy loader, passing every
(name, loader) through its model class's filter_tensors, and evaluates the loaders one tensor at a
time as its writer streams the file. The model class the converter picks is subclassed here so that
filter_tensors wraps the loader of each adapted tensor in a lazy W + scale * B @ A (merge.merged_into,
the arithmetic merge writes its shards with): peak RAM stays one tensor and its fp32 work copy, as in
merge, and the GGUF is bit-identical to the converter run on merge's checkpoint (tests/test_families.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _merging(adapter: Path, base: Path, lazy_class):
    """filter_tensors' wrapper: (name, loader) -> (name, the loader of the merged tensor)."""
    import torch

    from tutorforge.merge import adapter_updates, merged_into
    from tutorforge.safetensors_io import tensor_refs

    lora, full = adapter_updates(base, tensor_refs(base), adapter)

    def merged(name, w):
        base_tensor = w.clone()  # the converter's tensor may be a read-only view of the file
        work = torch.empty(base_tensor.shape, dtype=torch.float32) if name in lora else base_tensor
        return merged_into(name, base_tensor, lora.get(name), full.get(name), work)

    def wrap(name: str, gen):
        if name not in lora and name not in full:
            return gen

        def loader():
            w = gen()
            if not isinstance(w, lazy_class):  # the converter's eager mode
                return merged(name, w)
            meta = lazy_class.meta_with_dtype_and_shape(w.dtype, w.shape)
            return lazy_class(meta=meta, args=(w,), func=lambda eager: merged(name, eager))
        return loader
    return wrap


class _Merging:
    """Over the converter's model class: each tensor's loader through `merge_wrap` (see _merging)."""
    merge_wrap = None

    @classmethod
    def filter_tensors(cls, item):
        name, gen = item
        return super().filter_tensors((name, cls.merge_wrap(name, gen)))  # pyright: ignore


class _Gemma3:
    """Over the converter's Gemma3Model (conversion/gemma.py), what it leaves out:

    - the attention scale: transformers scales queries by query_pre_attn_scalar ** -0.5
      (modeling_gemma3.py), llama.cpp by a constant it does not read from the file, 1/sqrt(head_dim)
      (1/sqrt(hidden_size / heads) for its 62-layer "27B" type; llama-model.cpp, LLM_ARCH_GEMMA3).
      Real Gemma 3 checkpoints have the two equal; where they differ, the ratio is folded into the
      query norm's weight, which multiplies the queries just before RoPE (a linear map): exact.
    - the layers' pattern: llama.cpp assumes every 6th layer global when the file has no
      sliding_window_pattern; it is written from config.json's layer_types, and a model with no
      sliding layer gets no sliding_window (llama.cpp refuses a window with no sliding layer)."""

    def _sliding(self) -> list[bool] | None:
        types = self.hparams.get("layer_types")  # pyright: ignore[reportAttributeAccessIssue]
        return None if types is None else [t == "sliding_attention" for t in types]

    def set_gguf_parameters(self):
        sliding = self._sliding()
        if sliding is not None and not any(sliding):
            self.hparams["sliding_window_pattern"] = 1  # pyright: ignore  (Gemma3Model then writes no window)
        super().set_gguf_parameters()  # pyright: ignore[reportAttributeAccessIssue]
        if sliding is not None and any(sliding):
            self.gguf_writer.add_sliding_window_pattern(sliding)  # pyright: ignore[reportAttributeAccessIssue]

    def _query_factor(self) -> float:
        hp = self.hparams  # pyright: ignore[reportAttributeAccessIssue]
        head_dim = hp.get("head_dim", 256)  # Gemma3TextConfig's defaults (configuration_gemma3.py)
        llamacpp = (hp["hidden_size"] / hp["num_attention_heads"] if hp["num_hidden_layers"] == 62 else head_dim)
        return (llamacpp / hp.get("query_pre_attn_scalar", 256)) ** 0.5

    def modify_tensors(self, data_torch, name, bid):
        factor = self._query_factor()
        for new_name, tensor in super().modify_tensors(data_torch, name, bid):  # pyright: ignore
            if factor != 1.0 and new_name.endswith(".attn_q_norm.weight"):  # after Gemma3Model's + 1
                tensor = tensor * factor
            yield new_name, tensor


class _PreTokenizerByRules:
    """Over every converter class: a BPE tokenizer whose probe hash the converter's table lacks (a
    vocabulary of its own, trained or extended, with a known family's splitting rules) is named by
    its tokenizer.json's pre_tokenizer rules, as tutorforge's own writer names it
    (gguf_vocab.pre_tokenizer_by_rules), instead of the converter's NotImplementedError; export's
    verification then checks that llama.cpp tokenizes as the PyTorch tokenizer does.

    The name brings llama.cpp's defaults for the real tokenizer it names (llama-vocab.cpp: llama-bpe
    and tekken add a BOS before every text), which this vocabulary need not share: where the
    converter's SpecialVocab found no add_bos_token to write, the file gets the PyTorch tokenizer's own
    (whether it puts its BOS first), as gguf_vocab.tokenizer_from_hf writes it."""

    adds_bos: bool | None = None  # set when the pre-tokenizer was named by its rules

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return super().get_vocab_base_pre(tokenizer)  # pyright: ignore[reportAttributeAccessIssue]
        except NotImplementedError:
            import json

            from tutorforge.gguf_vocab import pre_tokenizer_by_rules

            path = self.dir_model / "tokenizer.json"  # pyright: ignore[reportAttributeAccessIssue]
            named = pre_tokenizer_by_rules(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
            if named is None:
                raise
            print(f"tutorforge: {path}: pre-tokenizer {named!r} named from its rules (its probe hash is not "
                  "in llama.cpp's table)", file=sys.stderr)
            bos = tokenizer.bos_token_id
            self.adds_bos = bos is not None and tokenizer.encode("a")[:1] == [bos]
            return named

    def set_vocab(self):
        super().set_vocab()  # pyright: ignore[reportAttributeAccessIssue]
        import gguf  # llama.cpp's gguf-py, which the converter writes with

        writer = self.gguf_writer  # pyright: ignore[reportAttributeAccessIssue]
        key = gguf.Keys.Tokenizer.ADD_BOS
        if self.adds_bos is not None and not any(key in kv for kv in writer.kv_data):
            writer.add_add_bos_token(self.adds_bos)


# architecture -> the class over the converter's that adds what it leaves out of the family's GGUF
FIXES: dict[str, type] = {"Gemma3ForCausalLM": _Gemma3}


def _with_additions(model_class, wrap, fix: type | None):
    """The converter's model class with the merge (when `wrap`), the family's fix (when any) and
    the pre-tokenizer named by its rules."""
    bases = ((_Merging,) if wrap else ()) + ((fix,) if fix else ()) + (_PreTokenizerByRules, model_class)
    namespace = {"model_arch": model_class.model_arch, "merge_wrap": staticmethod(wrap) if wrap else None}
    return type(model_class.__name__, bases, namespace)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tutorforge.convert_driver")
    parser.add_argument("model", type=Path)
    parser.add_argument("outfile", type=Path)
    parser.add_argument("outtype")
    parser.add_argument("--base", type=Path)
    parser.add_argument("--adapter", type=Path)
    args = parser.parse_args(argv)
    import convert_hf_to_gguf as converter  # pyright: ignore[reportMissingImports]  (llama.cpp's, on the path llamacpp_tools sets)
    from conversion.base import LazyTorchTensor  # pyright: ignore[reportMissingImports]

    from tutorforge.errors import UserError

    wrap = _merging(args.adapter, args.base, LazyTorchTensor) if args.adapter else None
    pick = converter.get_model_class

    def get_model_class(name: str, mmproj: bool = False):
        model_class = pick(name, mmproj=mmproj)
        return _with_additions(model_class, wrap, FIXES.get(name))

    converter.get_model_class = get_model_class
    sys.argv = ["convert_hf_to_gguf.py", str(args.model), "--outfile", str(args.outfile), "--outtype", args.outtype]
    try:
        converter.main()
    except UserError as e:  # the adapter does not fit the base: said as merge says it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
