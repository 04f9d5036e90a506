"""Open a GGUF file in llama.cpp (llama-cpp-python), and decode from it as Ollama does.

    llm = open_llama(path, n_ctx=2048, logits_all=True)          # threads and GPU layers: defaults below
    llm = open_llama(path, n_ctx=2048, threads=1, gpu_layers=0)  # pinned
    with ollama_penalty_window(llm, prompt_ids):                 # Llama.generate / create_completion
        ...

Every llama.cpp model tutorforge runs (verification, compare, chat, serve) is opened here.
Threads: the `threads` argument, else the environment variable TUTORFORGE_THREADS, else every CPU
this process may run on (os.sched_getaffinity); used for both token-by-token decoding and prompt
batches. GPU layers: the `gpu_layers` argument, else TUTORFORGE_GPU_LAYERS, else all of them (-1)
when this llama.cpp build can offload to a GPU (llama_supports_gpu_offload), else 0. The CLI's
`--threads N` and `--gpu-layers N` (chat, serve, compare, generate) set the arguments.

Decoding: llama-cpp-python's own generation (`Llama.generate`, `create_completion`) with its
sampler chain (llama.cpp's repeat penalty, then greedy at temperature 0). One thing differs from
Ollama and llama.cpp's server, which put the prompt's tokens into the sampler's history, so that the
repeat penalty's window (repeat_last_n) covers the prompt as well as the answer: llama-cpp-python
feeds it only the sampled tokens. `ollama_penalty_window` feeds the prompt too, in llama.cpp's own
sampler (llama_sampler_accept), so that tutorforge decodes what Ollama would.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tutorforge.errors import UserError

log = logging.getLogger(__name__)

THREADS_ENV = "TUTORFORGE_THREADS"
GPU_LAYERS_ENV = "TUTORFORGE_GPU_LAYERS"
ALL_LAYERS = -1  # llama.cpp's n_gpu_layers for "every layer"


def _env_int(name: str, minimum: int) -> int | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise UserError(f"environment variable {name}={value!r}: give a whole number >= {minimum} "
                        "(or unset it for the default)")
    return number


def default_threads() -> int:
    """TUTORFORGE_THREADS, else the number of CPUs this process may run on."""
    return shared_threads(1)


def shared_threads(models: int) -> int:
    """Threads for each of `models` llama.cpp models that decode at the same time (compare runs base
    and tuned side by side): TUTORFORGE_THREADS, else the CPUs split between them, at least 1 each,
    so that together they do not ask for more threads than there are CPUs."""
    return _env_int(THREADS_ENV, 1) or max(1, len(os.sched_getaffinity(0)) // models)


def default_gpu_layers() -> int:
    """TUTORFORGE_GPU_LAYERS, else every layer when llama.cpp was built with GPU offload, else 0."""
    import llama_cpp

    layers = _env_int(GPU_LAYERS_ENV, ALL_LAYERS)
    if layers is not None:
        return layers
    return ALL_LAYERS if llama_cpp.llama_supports_gpu_offload() else 0


def open_llama(path: Path, *, n_ctx: int, threads: int | None = None, gpu_layers: int | None = None,
               **options):
    """A llama_cpp.Llama for the GGUF at `path`; `options` are the purpose's own Llama arguments
    (logits_all, last_n_tokens_size, seed, vocab_only, ...)."""
    from llama_cpp import Llama

    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: give 1 or more")
    if gpu_layers is not None and gpu_layers < ALL_LAYERS:
        raise UserError(f"--gpu-layers {gpu_layers}: give 0 (CPU only), a number of layers, or -1 (all)")
    threads = threads or default_threads()
    gpu_layers = default_gpu_layers() if gpu_layers is None else gpu_layers
    log.debug("llama.cpp: %s, n_ctx %d, %d threads, %s GPU layers", Path(path).name, n_ctx, threads,
              "all" if gpu_layers == ALL_LAYERS else gpu_layers)
    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 n_gpu_layers=gpu_layers, verbose=False, **options)


@contextmanager
def ollama_penalty_window(llm, prompt: Sequence[int]) -> Iterator[None]:
    """While inside, the sampler that `llm.generate` (and so create_completion) builds has the
    prompt's tokens in its history, as Ollama and llama.cpp's server build theirs: the repeat
    penalty then counts the last repeat_last_n tokens of prompt + answer. (llama-cpp-python builds
    its sampler inside generate and offers no other way to seed its history.)"""
    build = llm._init_sampler
    prompt = [int(t) for t in prompt]

    def seeded(*args, **kwargs):
        sampler = build(*args, **kwargs)
        for token in prompt:
            sampler.accept(token)  # llama_sampler_accept: the penalties sampler records it
        return sampler

    llm._init_sampler = seeded
    try:
        yield
    finally:
        del llm._init_sampler  # back to the class's own method


def greedy(llm, prompt: Sequence[int], *, max_tokens: int, end: int, repeat_penalty: float = 1.0) -> Iterator[int]:
    """The greedy answer to `prompt`, token by token, through llama.cpp's sampler chain (repeat
    penalty over llm.last_n_tokens_size tokens of prompt + answer, as Ollama): ends after `end`,
    after max_tokens, or when the context is full."""
    llm.reset()  # the prompt evaluated whole every time: no reuse of a cached prefix
    count = 0
    with ollama_penalty_window(llm, prompt):
        for token in llm.generate(prompt, temp=0.0, repeat_penalty=repeat_penalty, reset=False):
            count += 1
            yield int(token)
            if token == end or count >= max_tokens or llm.n_tokens >= llm.n_ctx():
                return
