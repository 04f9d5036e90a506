"""The `tutorforge` command: a table from command name to one typed function per command.

    tutorforge --help
    tutorforge validate recipes/python-tutor-smollm2-cpu.yml

Each command's signature is its interface (positional parameters are arguments, the others
--options) and its docstring is its --help. A user's mistake (`UserError`) prints a short message
and exits with code 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP spin-waiting slows CPU work 3-5x
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the CLI draws its own progress

from tutorforge import __version__  # noqa: E402
from tutorforge.errors import UserError  # noqa: E402

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger("tutorforge")


def validate(config: Path) -> int:
    """Check a config without training: every problem at once, with file, line, key and fix.

    config: Axolotl-style YAML file
    """
    from tutorforge.config import validate_file
    from tutorforge.models import check_base_model

    report = validate_file(config)
    if report.problems:
        print(report.render())
    if report.errors:
        n = len(report.errors)
        raise UserError(f"{config}: {n} problem{'s' * (n != 1)}; fix {'them' if n > 1 else 'it'} "
                        "and run `tutorforge validate` again")
    cfg = report.config
    ready, where = check_base_model(cfg.base_model)
    if not ready:
        print(f"{config}: warning: {where}")
    else:  # trust_remote_code, tokenizer_config and special_tokens are checked against the model here
        _check_tokenizer(config, cfg)
    data = ", ".join(d.path for d in cfg.datasets) or "none"
    print(f"{config}: valid: {cfg.adapter} r={cfg.lora_r} on {cfg.base_model}, sequence_len "
          f"{cfg.sequence_len}, micro batch {cfg.micro_batch_size} x accumulation "
          f"{cfg.gradient_accumulation_steps}, {cfg.optimizer}, datasets: {data}")
    if ready:
        print(f"base model: {where}")
    return 0


def _check_tokenizer(config: Path, cfg: Config) -> None:
    """Whether the model needs trust_remote_code, and the config's tokenizer (tokenizer_config,
    special_tokens) loads, without downloading anything."""
    from tutorforge.models import resolve_base_model
    from tutorforge.tokenizer import check_remote_code, tokenizer_for

    try:
        model_dir = resolve_base_model(cfg.base_model, allow_download=False).path
        check_remote_code(model_dir, cfg.trust_remote_code)
        if cfg.special_tokens or cfg.tokenizer_config:
            tokenizer_for(model_dir, cfg.tokenizer_config, special_tokens=cfg.special_tokens,
                          trust_remote_code=cfg.trust_remote_code, allow_download=False)
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None


def plan(config: Path, *, gpu: str | None = None, vram: float | None = None, ram: float | None = None) -> int:
    """Predict training's peak memory (and RAM of merge and export) before loading anything.

    config: Axolotl-style YAML file
    gpu: hardware profile to plan for: rtx3060-12gb, rtx4090-24gb, t4-16gb, a100-40gb, a100-80gb, h100-80gb, cpu (default: tutorforge.hardware, else this machine)
    vram: plan for a GPU with this many GB instead of a profile
    ram: host RAM in GB (default: the profile's, or this machine's)
    """
    from tutorforge.config import load_config
    from tutorforge.plan import plan_training

    if gpu is not None and vram is not None:
        raise UserError("give --gpu or --vram, not both")
    result = plan_training(load_config(config), hardware=gpu, vram_gb=vram, ram_gb=ram, source=str(config))
    print(result.render())
    return 0 if result.fits else 1


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


def _tokenizer_for(cfg: Config):
    """(tokenizer, prompt format, sequence_len, model name) of a loaded config, or of the bundled
    model without one, for data commands."""
    from tutorforge.formatting import prompt_format
    from tutorforge.models import resolve_base_model
    from tutorforge.tokenizer import tokenizer_for

    name = cfg.base_model if cfg else "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer = tokenizer_for(resolve_base_model(name).path, cfg.tokenizer_config if cfg else None,
                              special_tokens=cfg.special_tokens if cfg else (),
                              trust_remote_code=cfg.trust_remote_code if cfg else False)
    fmt = prompt_format(tokenizer, cfg.chat_template if cfg else None,
                        cfg.default_system_message if cfg else None)
    if cfg is None:
        log.info("no --config: tokens counted for the bundled SmolLM2-135M-Instruct, sequence_len 2048")
    return tokenizer, fmt, cfg.sequence_len if cfg else 2048, name


def data_lint(paths: list[Path], *, config: Path | None = None, run_code: bool = True) -> int:
    """Check Alpaca files: rows, duplicates, token lengths, answer lengths, and run every Python block.

    paths: .jsonl or .json (array) files
    config: a config whose base_model, chat template and sequence_len to count tokens with
    run_code: execute every ```python block in the sandbox and check its stated output
    """
    from tutorforge.config import load_config
    from tutorforge.lint import lint, render

    tokenizer, fmt, sequence_len, name = _tokenizer_for(load_config(config) if config else None)
    report = lint(list(paths), tokenizer=tokenizer, fmt=fmt, sequence_len=sequence_len, model=name,
                  run_code=run_code)
    print(render(report))
    return 1 if report.failed else 0


def data_prepare(config: Path, *, skip_bad_rows: bool = False) -> int:
    """Load, check, format, tokenize, split and pack a config's datasets, and report.

    config: Axolotl-style YAML file
    skip_bad_rows: go on past unusable rows; they go to <output_dir>/rejected.jsonl with reasons
    """
    from tutorforge.config import load_config
    from tutorforge.data import prepare, write_rows

    cfg = load_config(config)
    with _writing(Path(cfg.output_dir)):
        tokenizer = _tokenizer_for(cfg)[0]
        prepared = prepare(cfg, tokenizer, skip_bad_rows=skip_bad_rows, config_dir=config.parent)
        held_out = Path(cfg.output_dir) / "heldout.jsonl"
        write_rows(prepared.val_rows, held_out)
    print(prepared.summary())
    print(f"held-out rows (never trained on): {held_out}")
    return 0


def train(config: Path, *, skip_bad_rows: bool = False, resume: bool = True, nproc: int = 1,
          ignore_plan: bool = False) -> int:
    """Train the config's LoRA/QLoRA adapter into output_dir/adapter (resumes after a kill).

    config: Axolotl-style YAML file
    skip_bad_rows: go on past unusable rows; they go to <output_dir>/rejected.jsonl with reasons
    resume: continue from the newest checkpoint in output_dir (--no-resume starts over)
    nproc: training processes (DDP through accelerate: one per GPU, or gloo on CPU)
    ignore_plan: train even when the memory plan says it will not fit
    """
    from tutorforge import distributed as dist
    from tutorforge.config import load_config
    from tutorforge.plan import apply_plan
    from tutorforge.train import train as run_training

    cfg = load_config(config)
    if nproc > 1 and dist.world_size() == 1:
        argv = ["train", str(config), *(["--skip-bad-rows"] if skip_bad_rows else []),
                *([] if resume else ["--no-resume"]), *(["--ignore-plan"] if ignore_plan else [])]
        with _writing(Path(cfg.output_dir)):
            return dist.launch(nproc, argv)
    if not dist.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    # one training per output_dir; the processes of one DDP run share it (the launcher holds the lock)
    lock = _writing(Path(cfg.output_dir)) if dist.world_size() == 1 else contextlib.nullcontext()
    with lock:
        cfg, decisions = apply_plan(cfg, ignore=ignore_plan)
        with _progress_bar("training") as progress:
            adapter = run_training(cfg, config_dir=config.parent, skip_bad_rows=skip_bad_rows, resume=resume,
                                   progress=progress, decisions=decisions)
    if not dist.is_main():
        return 0
    print(f"adapter: {adapter}")
    print(f"metrics: {adapter.parent / 'metrics.jsonl'}, curve: {adapter.parent / 'loss.png'}")
    return 0


def merge(run_dir: Path | None = None, *, base: str | None = None, adapter: Path | None = None,
          out: Path | None = None, shard_gb: float = 2.0) -> int:
    """Merge a LoRA adapter into its 16-bit base, tensor by tensor, in bounded RAM.

    run_dir: a training output_dir (its run.json names the base; adapter/ in, merged/ out)
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
        base, adapter, out = base or run.cfg.base_model, adapter or run.adapter, out or run.merged
    if not (base and adapter and out):
        raise UserError("merge needs a training output_dir, or all of --base, --adapter and --out")
    with _writing(run_dir, out), _progress_bar("merging", unit="tensors") as progress:
        merged = run_merge(resolve_base_model(base).path, adapter, out, shard_bytes=int(shard_gb * 2**30),
                           progress=progress)
    print(f"merged: {merged}")
    return 0


def export(run_dir: Path | None = None, *, base: str | None = None, adapter: Path | None = None,
           out: Path | None = None, outtype: str | None = None, quantize: str | None = None,
           verify: bool = True) -> int:
    """Write GGUF files (f16, q8_0, q4_k_m, ...) and verify each with llama.cpp.

    run_dir: a training output_dir: its merged/ checkpoint, else base + adapter/ in one streaming pass
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
    with _writing(run_dir, out), _progress_bar("exporting", unit="tensors") as progress:
        if run_dir is not None:
            report = export_run(run_dir, adapter=adapter, out=out, outtype=outtype, quantizations=quants,
                                verify=verify, progress=progress)
        elif base and out:
            report = export_model(Source(resolve_base_model(base).path, adapter), out, name="model",
                                  outtype=outtype or "f16", quantizations=quants or ("q4_k_m",),
                                  verify_rows=verify_rows(None) if verify else None, progress=progress)
        else:
            raise UserError("export needs a training output_dir, or --base (and --adapter) with --out")
    print(render_export(report))  # warnings: export_model logged them
    check_verification(report, out or run_dir / "gguf")
    if run_dir is not None and out is None and RunDir.open(run_dir).gguf().is_file():
        return package(run_dir)  # the Modelfile goes with the export
    return 0


def render_export(report: dict) -> str:
    """One line per exported file: type, size, path and its verification numbers."""
    lines = []
    for kind, path in report["files"].items():
        v = report.get("verification", {}).get(kind)
        extra = ""
        if v:
            agree = f", top-1 agreement {v['top1_agreement']:.2%}" if v["top1_agreement"] is not None else ""
            extra = (f" | tokenization {v['texts_tokenized'] - v['tokenization_mismatches']}/{v['texts_tokenized']}"
                     f"{agree} over {v['positions']} positions | perplexity {v['perplexity']:.3f}")
        lines.append(f"{kind:>7}  {report['sizes_mib'][kind]:>8.1f} MiB  {path}{extra}")
    return "\n".join(lines)


def package(run_dir: Path, *, gguf: Path | None = None) -> int:
    """Write an Ollama Modelfile next to the run's GGUF, with a TEMPLATE matching training.

    run_dir: a training output_dir that has been exported (RUN_DIR/gguf/)
    gguf: the GGUF file the Modelfile loads (default: the config's tutorforge.ollama.quantization)
    """
    from tutorforge.ollama import package as write_modelfile
    from tutorforge.rundir import RunDir

    run = RunDir.open(run_dir, "a run directory")
    with _writing(run_dir, gguf.parent if gguf else None):
        path = write_modelfile(run, gguf)
    name = run.cfg.tutorforge.ollama.model_name or run_dir.name
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
    name = name or run.cfg.tutorforge.ollama.model_name or run_dir.name
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
    prompts: Alpaca JSONL to ask (reference outputs optional; default: the held-out split)
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
    with _writing(run_dir, out), _progress_bar("comparing", unit="prompts") as progress:
        result, out = compare_models(cfg, config.parent if config else None,
                                     base=base, tuned=tuned, tuned_adapter=tuned_adapter, prompts=prompts,
                                     out=out, max_new_tokens=max_new_tokens, max_prompts=max_prompts,
                                     target_words=target_words, threads=threads, gpu_layers=gpu_layers,
                                     progress=progress)
    print(result.table())
    print(f"report: {out / 'report.html'} (and report.md, results.jsonl)")
    return 0


@contextlib.contextmanager
def _writing(run_dir: Path | None, out: Path | None = None):
    """Hold the locks of what a command writes: the training output_dir it works in, and an --out
    directory of its own (locked in tutorforge's cache, see outputs.lock_file: the command itself
    decides whether that directory is its to write before it puts anything there)."""
    from tutorforge.fsutil import exclusive
    from tutorforge.outputs import lock_file

    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            stack.enter_context(exclusive(run_dir))
        if out is not None and (run_dir is None or not Path(out).resolve().is_relative_to(Path(run_dir).resolve())):
            stack.enter_context(exclusive(Path(out), str(out), lock=lock_file(out)))
        yield


@contextlib.contextmanager
def _progress_bar(label: str, unit: str = "steps"):
    """A progress callback (step, total, row) drawing a bar with ETA on a terminal; None elsewhere."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=None, info="")

        def update(step: int, total: int, row: dict | None = None) -> None:
            info = f"loss {row['loss']:.3f} | {row['tokens_per_s']:.0f} tok/s" if row and "loss" in row else unit
            bar.update(task, completed=step, total=total, info=info)

        yield update


def keys(*, markdown: bool = False) -> int:
    """List every supported config key with its accepted values, default and meaning.

    markdown: print a Markdown table (the README's configuration reference)
    """
    from tutorforge.config import reference

    rows = reference()
    if markdown:
        print("| key | default | accepted | meaning | Axolotl |\n|---|---|---|---|---|")
        for name, accepted, default, doc in rows:
            axolotl = "tutorforge only" if name.startswith("tutorforge.") else "same key"
            print(f"| `{name}` | `{default}` | {accepted.replace('|', '/')} | {doc.replace('|', '/')} | {axolotl} |")
        return 0
    width = max(len(r[0]) for r in rows)
    for name, accepted, default, doc in rows:
        print(f"{name:<{width}}  {doc}; {accepted}; default {default}")
    return 0


def run(config: Path, *, from_: str | None = None, ignore_plan: bool = False) -> int:
    """The whole pipeline: validate, plan, train, merge, export, package, compare (resumable).

    config: Axolotl-style YAML file (recipes/ has examples)
    from_: redo this stage and every one after it (validate, plan, train, merge, export, package, compare)
    ignore_plan: train even when the memory plan says it will not fit
    """
    from tutorforge.pipeline import run as run_pipeline

    p = run_pipeline(config, start=from_, ignore_plan=ignore_plan, progress=_progress_bar)
    rows = [(o.stage, o.status, f"{o.seconds:.0f} s", str(o.output or ""), _size(o.size)) for o in p.outcomes]
    widths = [max(len(r[i]) for r in rows + [("stage", "", "time", "output", "size")]) for i in range(5)]
    print()
    for r in [("stage", "", "time", "output", "size"), *rows]:
        print("  ".join(c.ljust(w) if i != 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))))
    if p.comparison:
        print(f"\nbase vs tuned on {p.run_dir / 'compare'} (report.html):\n{p.comparison}")
    name = p.cfg.tutorforge.ollama.model_name or p.run_dir.name
    print(f"\nchat with it:  tutorforge chat {p.run_dir}\n"
          f"deploy it:     tutorforge deploy {p.run_dir}   (or: cd {p.run_dir / 'gguf'} && ollama create {name} "
          f"-f Modelfile && ollama run {name})")
    return 0


def _size(n: int) -> str:
    if not n:
        return ""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


COMMANDS: dict[str, Callable[..., int]] = {  # "group name" makes `tutorforge group name`
    "run": run,
    "validate": validate,
    "plan": plan,
    "data lint": data_lint,
    "data prepare": data_prepare,
    "train": train,
    "merge": merge,
    "export": export,
    "package": package,
    "deploy": deploy,
    "chat": chat,
    "serve": serve,
    "compare": compare,
    "generate": generate,
    "keys": keys,
}


def _param_help(doc: str) -> dict[str, str]:
    helps = {}
    for line in doc.splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            helps[name] = text
    return helps


def _add_command(sub, name: str, fn: Callable[..., int]) -> None:
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0]
    parser = sub.add_parser(name, help=summary, description=summary)
    helps = _param_help(doc)
    hints = typing.get_type_hints(fn)
    for param in inspect.signature(fn).parameters.values():
        kind = hints.get(param.name, str)
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))  # X | None -> X
        flag = "--" + param.name.rstrip("_").replace("_", "-")  # from_ -> --from
        if typing.get_origin(kind) is list:
            parser.add_argument(param.name, type=typing.get_args(kind)[0], nargs="+",
                                help=helps.get(param.name))
        elif param.kind is param.POSITIONAL_OR_KEYWORD:  # an argument; optional when it has a default
            optional = {} if param.default is inspect.Parameter.empty else {"nargs": "?", "default": param.default}
            parser.add_argument(param.name, type=kind, help=helps.get(param.name), **optional)
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(flag, dest=param.name, type=kind, required=True, help=helps.get(param.name))
        elif kind is bool:
            parser.add_argument(flag, dest=param.name, action=argparse.BooleanOptionalAction,
                                default=param.default, help=helps.get(param.name))
        else:
            parser.add_argument(flag, dest=param.name, type=kind, default=param.default,
                                help=f"{helps.get(param.name, '')} (default: {param.default})")
    parser.set_defaults(_command=fn)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tutorforge", description="Fine-tune a specialised assistant and ship it to Ollama.")
    parser.add_argument("--version", action="version", version=f"tutorforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, fn in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            helps = ", ".join(n.split(" ", 1)[1] for n in COMMANDS if n.startswith(group + " "))
            group_parser = sub.add_parser(group, help=f"{group} commands: {helps}")
            groups[group] = group_parser.add_subparsers(title=f"{group} commands", metavar="COMMAND",
                                                        required=True)
        _add_command(groups[group] if group else sub, leaf, fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes announces an optional CPU kernel package it does not need
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    kwargs = {k: v for k, v in vars(args).items() if k not in {"_command", "debug"}}
    from tutorforge import fsutil

    fsutil.HOLDER = f"tutorforge {args._command.__name__.replace('_', ' ')}"
    try:
        return args._command(**kwargs)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's mistake: say so, keep the trace for --debug
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\nrun again with --debug for the "
              "traceback, and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
