"""llama.cpp's converter (convert_hf_to_gguf.py) run with tutorforge's two additions: a LoRA adapter
merged into the base tensors as the converter reads them (one pass: no merged checkpoint on disk),
and the family fixes of FIXES (what the converter leaves out of a family's GGUF).

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


def _with_additions(model_class, wrap, fixes):
    """The converter's model class, subclassed: each tensor's loader through `wrap`, then each of
    `fixes` (a function of the model instance) applied after the converter's own GGUF parameters."""
    def filter_tensors(cls, item):
        name, gen = item
        return super(subclass, cls).filter_tensors((name, wrap(name, gen) if wrap else gen))

    def set_gguf_parameters(self):
        super(subclass, self).set_gguf_parameters()
        for fix in fixes:
            fix(self)

    namespace = {"model_arch": model_class.model_arch, "filter_tensors": classmethod(filter_tensors),
                 "set_gguf_parameters": set_gguf_parameters}
    subclass = type(model_class.__name__, (model_class,), namespace)
    return subclass


# architecture -> fixes: functions of the converter's model instance that add to its GGUF what it
# leaves out for that family (none yet at the pinned llama.cpp)
FIXES: dict[str, tuple] = {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tutorforge.convert_driver")
    parser.add_argument("model", type=Path)
    parser.add_argument("outfile", type=Path)
    parser.add_argument("outtype")
    parser.add_argument("--base", type=Path)
    parser.add_argument("--adapter", type=Path)
    args = parser.parse_args(argv)
    import convert_hf_to_gguf as converter  # llama.cpp's, on the path llamacpp_tools sets
    from conversion.base import LazyTorchTensor

    from tutorforge.errors import UserError

    wrap = _merging(args.adapter, args.base, LazyTorchTensor) if args.adapter else None
    pick = converter.get_model_class

    def get_model_class(name: str, mmproj: bool = False):
        model_class = pick(name, mmproj=mmproj)
        fixes = FIXES.get(name, ())
        return _with_additions(model_class, wrap, fixes) if wrap or fixes else model_class

    converter.get_model_class = get_model_class
    sys.argv = ["convert_hf_to_gguf.py", str(args.model), "--outfile", str(args.outfile), "--outtype", args.outtype]
    try:
        converter.main()
    except UserError as e:  # the adapter does not fit the base: said as merge says it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
