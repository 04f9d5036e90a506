"""The commands on a model: `tutorforge merge`, `export` (GGUF), `package` and `deploy` (Ollama),
`generate`, `chat`, `serve`, and `compare` (base vs tuned).

    tutorforge export runs/python-tutor          # GGUF files, verified by llama.cpp, then the Modelfile
    tutorforge chat runs/python-tutor
    tutorforge compare recipes/python-tutor-smollm2-cpu.yml

One typed function per command; tutorforge.cli turns its signature into options and its docstring
into --help. Heavy imports stay inside the functions, so `tutorforge --help` loads none of them.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from tutorforge.cli_locks import writing
from tutorforge.cli_terminal import progress_bar, render_export
from tutorforge.errors import UserError

log = logging.getLogger("tutorforge")


def merge(run_dir: Path | None = None, *, base: str | None = None, adapter: Path | None = None,
          out: Path | None = None, shard_gb: float = 2.0) -> int:
    """Merge a LoRA adapter into its 16-bit base, tensor by tensor, in bounded RAM.

    run_dir: a training output_dir (its run.json names the base; adapter/ in, merged/ out; nothing for a full fine-tune)
    base: the base model (anything base_model accepts), instead of run_dir
    adapter: the PEFT adapter directory, instead of run_dir
    out: where to write the merged checkpoint
    shard_gb: largest safetensors shard, in GiB
    """
    from tutorforge.merge import merge as run_merge
    from tutorforge.models import resolve_base_model
    from tutorforge.rundir import RunDir

    if run_dir is not None:
        run = RunDir.open(run_dir, "--base, --adapter and --out")
        if run.full and adapter is None:  # exit 0: a script that merges every run goes on to export
            print(f"nothing to merge: {run_dir} is a full fine-tune (adapter unset); {run.model} is the whole "
                  f"trained model: export it with `tutorforge export {run_dir}`")
            return 0
        base, adapter, out = base or run.cfg.base_model, adapter or run.adapter, out or run.merged
    if not (base and adapter and out):
        raise UserError("merge needs a training output_dir, or all of --base, --adapter and --out")
    with writing(run_dir, out), progress_bar("merging", unit="tensors") as progress:
        merged = run_merge(resolve_base_model(base).path, adapter, out, shard_bytes=int(shard_gb * 2**30),
                           progress=progress)
    print(f"merged: {merged}")
    return 0


def export(run_dir: Path | None = None, *, base: str | None = None, adapter: Path | None = None,
           out: Path | None = None, outtype: str | None = None, quantize: str | None = None,
           verify: bool = True) -> int:
    """Write GGUF files (f16, q8_0, q4_k_m, ...) and verify each with llama.cpp.

    run_dir: a training output_dir: merged/, else base + adapter/ in one streaming pass (a full fine-tune: model/)
    base: the base model, instead of run_dir
    adapter: a PEFT adapter merged on the fly (optional with --base)
    out: directory for the GGUF files (default: RUN_DIR/gguf)
    outtype: f16, bf16, f32 or q8_0 (default: the config's tutorforge.export.outtype)
    quantize: comma-separated quantisations, e.g. q4_k_m,q8_0 (default: the config's)
    verify: load every file in llama.cpp and compare tokenization and predictions with PyTorch
    """
    from tutorforge.export import Source, check_verification, export_model, export_run, verify_rows
    from tutorforge.models import resolve_base_model
    from tutorforge.rundir import RunDir

    quants = tuple(q.strip() for q in quantize.split(",")) if quantize else None
    with writing(run_dir, out), progress_bar("exporting", unit="tensors") as progress:
        if run_dir is not None:
            report = export_run(run_dir, adapter=adapter, out=out, outtype=outtype, quantizations=quants,
                                verify=verify, progress=progress)
            gguf_dir = out or run_dir / "gguf"
        elif base and out:
            report = export_model(Source(resolve_base_model(base).path, adapter), out, name="model",
                                  outtype=outtype or "f16", quantizations=quants or ("q4_k_m",),
                                  verify_rows=verify_rows(None) if verify else None, progress=progress)
            gguf_dir = out
        else:
            raise UserError("export needs a training output_dir, or --base (and --adapter) with --out")
    print(render_export(report))  # warnings: export_model logged them
    check_verification(report, gguf_dir)
    if run_dir is not None and out is None and RunDir.open(run_dir).gguf().is_file():
        return package(run_dir)  # the Modelfile goes with the export
    return 0


def package(run_dir: Path, *, gguf: Path | None = None) -> int:
    """Write an Ollama Modelfile next to the run's GGUF, with a TEMPLATE matching training.

    run_dir: a training output_dir that has been exported (RUN_DIR/gguf/)
    gguf: the GGUF file the Modelfile loads (default: the config's tutorforge.ollama.quantization)
    """
    from tutorforge.ollama import package as write_modelfile
    from tutorforge.rundir import RunDir

    run = RunDir.open(run_dir, "a run directory")
    with writing(run_dir, gguf.parent if gguf else None):
        path = write_modelfile(run, gguf)
    name = run.model_name
    print(f"Modelfile: {path}\nto deploy: cd {path.parent} && ollama create {name} -f Modelfile")
    return 0


def deploy(run_dir: Path, *, name: str | None = None) -> int:
    """Deploy the packaged model to Ollama: the `ollama` CLI if present, else its REST API at
    OLLAMA_HOST (default 127.0.0.1:11434), else print the commands to run.

    run_dir: a training output_dir with gguf/Modelfile (tutorforge package writes it)
    name: the model's name in Ollama (default: the config's tutorforge.ollama.model_name)
    """
    import shutil
    import subprocess

    from tutorforge.ollama_rest import deploy_rest, ollama_host, server_answers
    from tutorforge.rundir import RunDir

    run = RunDir.open(run_dir, "a run directory")
    modelfile_path = run.modelfile
    if not modelfile_path.is_file():
        raise UserError(f"{modelfile_path}: no Modelfile; run `tutorforge package {run_dir}` first")
    name = name or run.model_name
    if shutil.which("ollama"):
        return subprocess.run(["ollama", "create", name, "-f", "Modelfile"], cwd=modelfile_path.parent).returncode
    host = ollama_host()
    if server_answers(host):
        deploy_rest(host, name, modelfile_path)
        print(f"deployed: ollama run {name}")
        return 0
    print(f"Ollama is not installed here and no server answers at {host}. On a machine with Ollama:\n"
          f"  cd {modelfile_path.parent.resolve()}\n  ollama create {name} -f Modelfile\n  ollama run {name}")
    return 0


def generate(model: str, *, prompt: str, input: str = "", system: str | None = None,
             max_new_tokens: int = 200, threads: int | None = None, gpu_layers: int | None = None) -> int:
    """Answer one prompt greedily (temperature 0) and print the answer.

    model: a config file (its base_model is used), a model directory, a .gguf file (llama.cpp), a hub id, or `smollm2`
    prompt: the instruction
    input: optional input for the instruction (Alpaca's second field)
    system: system prompt (default: the config's default_system_message)
    max_new_tokens: longest answer in tokens
    threads: llama.cpp threads for a .gguf (default: TUTORFORGE_THREADS, else all CPUs), else PyTorch's
    gpu_layers: llama.cpp layers on the GPU, -1 all (default: TUTORFORGE_GPU_LAYERS, else all if it can, else 0)
    """
    from tutorforge.evaluate import GGUFGenerator, TorchGenerator
    from tutorforge.models import resolve_base_model

    if model.endswith((".yml", ".yaml")):
        from tutorforge.config import load_config

        cfg = load_config(model)
        model, system = cfg.base_model, system or cfg.default_system_message
    if model.endswith(".gguf"):
        gen = GGUFGenerator(Path(model), threads=threads, gpu_layers=gpu_layers)
    else:
        if threads:
            import torch

            torch.set_num_threads(threads)
        if gpu_layers is not None:
            log.warning("--gpu-layers is for a .gguf model (llama.cpp); %s runs in PyTorch on the CPU", model)
        gen = TorchGenerator(resolve_base_model(model).path, name=model)
    answer = gen.generate(prompt, input, system=system, max_new_tokens=max_new_tokens)
    print(answer.text)
    if not answer.stopped:
        log.warning("answer cut at max_new_tokens=%d (no end-of-turn token)", max_new_tokens)
    return 0


def chat(model: Path, *, prompt: str | None = None, system: str | None = None, temperature: float = 0.0,
         max_tokens: int = 512, threads: int | None = None, gpu_layers: int | None = None) -> int:
    """Chat with an exported model in the terminal (llama.cpp, the Modelfile's template and stops).

    model: a training output_dir (its exported GGUF) or a .gguf file
    prompt: answer this once and exit, instead of the interactive chat
    system: system prompt (default: the config's default_system_message)
    temperature: sampling temperature (0: greedy)
    max_tokens: longest answer in tokens
    threads: llama.cpp threads (default: TUTORFORGE_THREADS, else every CPU this process may use)
    gpu_layers: llama.cpp layers on the GPU, -1 all (default: TUTORFORGE_GPU_LAYERS, else all if it can, else 0)
    """
    from tutorforge.chat import open_model, repl

    chat_model = open_model(model, threads=threads, gpu_layers=gpu_layers)
    if prompt is not None:
        messages = chat_model.messages_for([{"role": "user", "content": prompt}], system)
        for piece in chat_model.stream(messages, max_tokens=max_tokens, temperature=temperature):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    if system:
        chat_model.system = system
    repl(chat_model, max_tokens=max_tokens, temperature=temperature)
    return 0


def serve(model: Path, *, port: int = 8000, threads: int | None = None, gpu_layers: int | None = None) -> int:
    """Serve an exported model over an OpenAI-compatible HTTP API on 127.0.0.1 (no Ollama needed).

    model: a training output_dir (its exported GGUF) or a .gguf file
    port: TCP port on 127.0.0.1 (0: any free port)
    threads: llama.cpp threads (default: TUTORFORGE_THREADS, else every CPU this process may use)
    gpu_layers: llama.cpp layers on the GPU, -1 all (default: TUTORFORGE_GPU_LAYERS, else all if it can, else 0)
    """
    from tutorforge.chat import open_model
    from tutorforge.serve import serve as run_server

    def ready(port: int) -> None:
        print(f"serving on http://127.0.0.1:{port}/v1", flush=True)

    try:
        run_server(open_model(model, threads=threads, gpu_layers=gpu_layers), port=port, ready=ready)
    except OSError as exc:
        raise UserError(f"port {port}: {exc.strerror}; choose another with --port") from None
    return 0


def compare(config: Path | None = None, *, base: str | None = None, tuned: str | None = None,
            tuned_adapter: Path | None = None, prompts: Path | None = None, out: Path | None = None,
            max_new_tokens: int | None = None, max_prompts: int | None = None,
            target_words: int | None = None, threads: int | None = None, gpu_layers: int | None = None) -> int:
    """Compare base and tuned answers at temperature 0; their code runs in a sandbox; HTML report.

    config: a config: its base_model, output_dir (the tuned run), held-out split, prompt format, settings
    base: the base model: a model directory, a .gguf file or anything base_model accepts (default: the config's)
    tuned: the tuned model: a training output_dir (base + adapter/), a .gguf file or a model directory
    tuned_adapter: a PEFT adapter directory applied to --tuned (then a base model)
    prompts: JSONL to ask: Alpaca rows or conversations (messages: the last user turn) (default: held-out split)
    out: directory for results.jsonl, report.md, report.html (default: the tuned run's compare/)
    max_new_tokens: longest answer (default: tutorforge.compare.max_new_tokens)
    max_prompts: ask at most this many prompts (default: tutorforge.compare.max_prompts, else all)
    target_words: brevity target in words (default: tutorforge.compare.target_words, else p90 of training answers)
    threads: llama.cpp threads per GGUF model (default: TUTORFORGE_THREADS, else every CPU this process may use)
    gpu_layers: llama.cpp layers on the GPU, -1 all (default: TUTORFORGE_GPU_LAYERS, else all if it can, else 0)
    """
    from tutorforge.config import load_config
    from tutorforge.report import compare_models
    from tutorforge.rundir import RunDir
    from tutorforge.sandbox import require_sandbox

    require_sandbox()  # before any model loads: model-written code never runs unsandboxed
    cfg = load_config(config) if config else None
    tuned_run = run.path if tuned and (run := RunDir.find(Path(tuned))) else None
    run_dir = tuned_run or (Path(cfg.output_dir) if cfg and not tuned else None)
    with writing(run_dir, out), progress_bar("comparing", unit="prompts") as progress:
        result, out = compare_models(cfg, config.parent if config else None,
                                     base=base, tuned=tuned, tuned_adapter=tuned_adapter, prompts=prompts,
                                     out=out, max_new_tokens=max_new_tokens, max_prompts=max_prompts,
                                     target_words=target_words, threads=threads, gpu_layers=gpu_layers,
                                     progress=progress)
    print(result.table())
    print(f"report: {out / 'report.html'} (and report.md, results.jsonl)")
    return 0
