"""The commands that check a config, its data and its memory, and train: `tutorforge validate`,
`plan`, `keys`, `data lint`, `data prepare`, `train`, and `run` (the whole pipeline).

    tutorforge validate recipes/python-tutor-smollm2-cpu.yml
    tutorforge data lint data/python_tutor.jsonl --config recipes/python-tutor-smollm2-cpu.yml
    tutorforge train recipes/python-tutor-smollm2-cpu.yml

One typed function per command; tutorforge.cli turns its signature into options and its docstring
into --help. Heavy imports stay inside the functions, so `tutorforge --help` loads none of them.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.cli_locks import writing
from tutorforge.cli_terminal import progress_bar, render_stages
from tutorforge.errors import UserError

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
    assert cfg is not None  # config.parse: the report holds the Config when there is no error
    ready, where = check_base_model(cfg.base_model)
    if not ready:
        print(f"{config}: warning: {where}")
    else:  # trust_remote_code, tokenizer_config and special_tokens are checked against the model here
        _check_model(config, cfg)
    data = ", ".join(d.path for d in cfg.datasets) or "none"
    what = f"{cfg.adapter} r={cfg.lora_r}" if cfg.adapter else "full fine-tune" + (
        f" of {len(cfg.unfrozen_parameters)} parameter patterns" if cfg.unfrozen_parameters else "")
    print(f"{config}: valid: {what} on {cfg.base_model}, sequence_len "
          f"{cfg.sequence_len}, micro batch {cfg.micro_batch_size} x accumulation "
          f"{cfg.gradient_accumulation_steps}, {cfg.optimizer}, datasets: {data}")
    if ready:
        print(f"base model: {where}")
    return 0


def _check_model(config: Path, cfg: Config) -> None:
    """Whether the model needs trust_remote_code, the config's tokenizer (tokenizer_config,
    special_tokens) loads, and export and package can take the model (support.py), without
    downloading anything."""
    from tutorforge.models import resolve_base_model
    from tutorforge.support import check_model
    from tutorforge.tokenizer import check_remote_code, tokenizer_for

    try:
        model_dir = resolve_base_model(cfg.base_model, allow_download=False).path
        check_remote_code(model_dir, cfg.trust_remote_code)
        if cfg.special_tokens or cfg.tokenizer_config:
            tokenizer_for(model_dir, cfg.tokenizer_config, special_tokens=cfg.special_tokens,
                          trust_remote_code=cfg.trust_remote_code, allow_download=False)
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None
    check_model(model_dir, str(config), cfg)  # before any training: export or package would refuse it


def plan(config: Path, *, gpu: str | None = None, vram: float | None = None, ram: float | None = None) -> int:
    """Predict training's peak memory (and RAM of merge and export) before loading anything.

    config: Axolotl-style YAML file
    gpu: hardware profile to plan for: rtx3060-12gb, rtx4090-24gb, t4-16gb, a100-40gb, a100-80gb, h100-80gb, cpu (default: tutorforge.hardware, else this machine)
    vram: plan for a GPU with this many GB instead of a profile
    ram: host RAM in GB (default: the profile's, or this machine's)
    """  # noqa: E501 (one line per option: the --help text)
    from tutorforge.config import load_config
    from tutorforge.plan import plan_training
    from tutorforge.support import check_config_model

    if gpu is not None and vram is not None:
        raise UserError("give --gpu or --vram, not both")
    cfg = load_config(config)
    check_config_model(cfg, str(config))  # a model that is here: can it be exported and packaged?
    result = plan_training(cfg, hardware=gpu, vram_gb=vram, ram_gb=ram, source=str(config))
    print(result.render())
    return 0 if result.fits else 1


def keys(*, markdown: bool = False, axolotl: bool = False) -> int:
    """List every supported config key with its accepted values, default and meaning.

    markdown: print Markdown tables (the README's configuration reference)
    axolotl: list instead every key of Axolotl's schema that tutorforge refuses or ignores, and why
    """
    from tutorforge.axolotl_keys import schema, schema_commit
    from tutorforge.config import reference

    table = schema()
    if axolotl:
        rows = [(k.name, k.status, k.reason) for k in table.values() if k.status != "implemented"]
        if markdown:
            print(f"Axolotl's schema at [{schema_commit()[:12]}](https://github.com/axolotl-ai-cloud/axolotl/"
                  f"tree/{schema_commit()}) has {len(table)} keys: "
                  f"{sum(k.status == 'implemented' for k in table.values())} implemented, "
                  f"{sum(k.ignored for k in table.values())} accepted and ignored, "
                  f"{sum(k.status == 'refused' for k in table.values())} refused.\n")
            print("| Axolotl key | tutorforge | why, and what to do |\n|---|---|---|")
            for name, status, reason in rows:
                print(f"| `{name}` | {status} | {reason.replace('|', '/')} |")
            return 0
        width = max(len(r[0]) for r in rows)
        for name, status, reason in rows:
            print(f"{name:<{width}}  {status:<15}  {reason}")
        return 0
    rows = reference()

    def origin(name: str) -> str:
        key = table.get(name)
        if name.startswith("tutorforge.") or key is None:
            return "tutorforge only"
        if key.ignored:
            return "accepted, ignored"
        return "same key" + (f" ({key.reason})" if key.reason else "")

    if markdown:
        print("| key | default | accepted | meaning | Axolotl |\n|---|---|---|---|---|")
        for name, accepted, default, doc in rows:
            print(f"| `{name}` | `{default}` | {accepted.replace('|', '/')} | {doc.replace('|', '/')} | "
                  f"{origin(name).replace('|', '/')} |")
        return 0
    width = max(len(r[0]) for r in rows)
    for name, accepted, default, doc in rows:
        print(f"{name:<{width}}  {doc}; {accepted}; default {default}; Axolotl: {origin(name)}")
    return 0


def _tokenizer_for(cfg: Config | None):
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
    """Check dataset files: rows, duplicates, token lengths, answer lengths, and run every Python block.

    paths: .jsonl or .json (array) files
    config: a config whose base_model, chat template, sequence_len and dataset types to read and count with
    run_code: execute every ```python block in the sandbox and check its stated output
    """
    from tutorforge.config import load_config
    from tutorforge.lint import lint, render

    cfg = load_config(config) if config else None
    tokenizer, fmt, sequence_len, name = _tokenizer_for(cfg)
    report = lint(list(paths), tokenizer=tokenizer, fmt=fmt, sequence_len=sequence_len, model=name,
                  run_code=run_code, datasets=cfg.datasets if cfg else (),
                  config_dir=config.parent if config else None)
    print(render(report))
    return 1 if report.failed else 0


def data_prepare(config: Path, *, skip_bad_rows: bool = False) -> int:
    """Load, check, format, tokenize, split and pack a config's datasets, and report.

    config: Axolotl-style YAML file
    skip_bad_rows: go on past unusable rows; they go to <output_dir>/rejected.jsonl with reasons
    """
    from tutorforge.config import load_config
    from tutorforge.prepare import prepare, write_rows
    from tutorforge.rundir import RunDir

    cfg = load_config(config)
    with writing(Path(cfg.output_dir)):
        tokenizer = _tokenizer_for(cfg)[0]
        prepared = prepare(cfg, tokenizer, skip_bad_rows=skip_bad_rows, config_dir=config.parent)
        held_out = RunDir.for_config(cfg).heldout
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
        with writing(Path(cfg.output_dir)):
            return dist.launch(nproc, argv)
    if not dist.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    # one training per output_dir; the processes of one DDP run share it (the launcher holds the lock)
    lock = writing(Path(cfg.output_dir)) if dist.world_size() == 1 else contextlib.nullcontext()
    with lock:
        cfg, decisions = apply_plan(cfg, ignore=ignore_plan)
        with progress_bar("training") as progress:
            adapter = run_training(cfg, config_dir=config.parent, skip_bad_rows=skip_bad_rows, resume=resume,
                                   progress=progress, decisions=decisions)
    if not dist.is_main():
        return 0
    print(f"adapter: {adapter}")
    print(f"metrics: {adapter.parent / 'metrics.jsonl'}, curve: {adapter.parent / 'loss.png'}")
    return 0


def run(config: Path, *, from_: str | None = None, ignore_plan: bool = False) -> int:
    """The whole pipeline: validate, plan, train, merge, export, package, compare (resumable).

    config: Axolotl-style YAML file (recipes/ has examples)
    from_: redo this stage and every one after it (validate, plan, train, merge, export, package, compare)
    ignore_plan: train even when the memory plan says it will not fit
    """
    from tutorforge.pipeline import run as run_pipeline
    from tutorforge.pipeline import run_dir_of

    p = run_pipeline(config, start=from_, ignore_plan=ignore_plan, progress=progress_bar)
    run, name = run_dir_of(p), run_dir_of(p).model_name
    print(f"\n{render_stages(p.outcomes)}")
    if p.comparison:
        print(f"\nbase vs tuned on {run.compare_dir} (report.html):\n{p.comparison}")
    print(f"\nchat with it:  tutorforge chat {p.run_dir}\n"
          f"deploy it:     tutorforge deploy {p.run_dir}   (or: cd {run.gguf_dir} && ollama create {name} "
          f"-f Modelfile && ollama run {name})")
    return 0
