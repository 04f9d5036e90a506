"""The whole path in one resumable command: validate, plan, train, merge, export, package, compare.

    tutorforge run recipes/python-tutor-smollm2-cpu.yml
    tutorforge run recipe.yml --from export        # redo export and every stage after it

Each stage after training records in output_dir/run.json (under "stages", through
tutorforge.rundir) the content hashes of
its inputs and of the files it wrote. A stage is skipped when its inputs are unchanged and its
files are still there as written; a stage that was interrupted is redone, keeping what it had
finished under final names (every file is written atomically) when its inputs are the same, and
deleting it when they are not. Training resumes from its newest checkpoint on its own. A full
fine-tune (adapter unset) has nothing to merge: the merge stage is recorded as skipped, with its
reason, and export reads the trained model/ itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tutorforge.config import Config
from tutorforge.errors import UserError
from tutorforge.fsutil import sha256_file
from tutorforge.rundir import RunDir, save_stages

log = logging.getLogger(__name__)

STAGES = ("validate", "plan", "train", "merge", "export", "package", "compare")


@dataclass
class Outcome:
    stage: str
    status: str  # "done" | "skipped"
    seconds: float
    output: Path | None = None
    size: int = 0  # bytes of what the stage wrote
    reason: str | None = None  # why a stage that never runs for this config was skipped


@dataclass
class Pipeline:
    config_path: Path
    cfg: Config | None  # set by validate (and plan's fixes)
    run_dir: Path
    redo: set[str]  # stages that --from forces
    progress: Callable  # (label, unit) -> context manager yielding a progress callback or None
    ignore_plan: bool = False
    stages: dict = field(default_factory=dict)  # the records kept in run.json
    outcomes: list[Outcome] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    comparison: str | None = None  # the A/B table

    @property
    def config(self) -> Config:
        """The validated (and planned) config; validate, the first stage, sets it."""
        if self.cfg is None:
            raise RuntimeError("the pipeline's config is read before validate set it")
        return self.cfg


def _no_progress(label: str, unit: str = "steps"):
    return contextlib.nullcontext(None)


def run(config_path: Path, *, start: str | None = None, ignore_plan: bool = False, progress=None) -> Pipeline:
    """Run every stage of the config's pipeline (from `start` on, redoing it and what follows)."""
    if start is not None and start not in STAGES:
        from tutorforge.rules import did_you_mean

        raise UserError(f"--from {start}: not a stage{did_you_mean(start, STAGES)}; stages: {', '.join(STAGES)}")
    redo: set[str] = set(STAGES[STAGES.index(start):]) if start else set()
    from tutorforge.fsutil import exclusive

    p = Pipeline(Path(config_path), None, Path("."), redo, progress or _no_progress, ignore_plan)
    with contextlib.ExitStack() as stack:
        for name, work in (("validate", _validate), ("plan", _plan), ("train", _train), ("merge", _merge),
                           ("export", _export), ("package", _package), ("compare", _compare)):
            begun = time.monotonic()
            log.info("== %s", name)
            outcome = work(p)
            outcome.seconds = time.monotonic() - begun
            p.outcomes.append(outcome)
            if name == "validate":  # one run per output_dir at a time
                stack.enter_context(exclusive(p.run_dir))
    return p


# --- bookkeeping --------------------------------------------------------------------------------

def _file_records(paths: list[Path]) -> dict[str, dict]:
    return {str(path): {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
                        "sha256": sha256_file(path)} for path in paths}


def _intact(record: dict) -> bool:
    """The files a stage wrote are still there, unchanged since (size and modification time)."""
    for name, meta in record.get("files", {}).items():
        path = Path(name)
        if not path.is_file() or path.stat().st_size != meta["size"] or path.stat().st_mtime_ns != meta["mtime_ns"]:
            return False
    return bool(record.get("files"))


def digest(record: dict | None) -> dict[str, str]:
    """What a later stage depends on: the content hashes of a stage's files."""
    return {Path(k).name: v["sha256"] for k, v in (record or {}).get("files", {}).items()}


def run_dir_of(p: Pipeline) -> RunDir:
    """The run directory of the pipeline's (planned) config."""
    return RunDir(p.run_dir, p.config)


def _save(p: Pipeline) -> None:
    """Write the stage records into run.json (which training wrote), atomically."""
    save_stages(p.run_dir, p.stages)


def _stage(p: Pipeline, name: str, inputs: dict, work: Callable[[bool], Path],
           outputs: Callable[[Path], list[Path]]) -> Outcome:
    """Skip `name` when its inputs and outputs are as recorded; else run work(resume), where resume
    says the stage was interrupted on these same inputs, so its finished files may be kept."""
    inputs = json.loads(json.dumps(inputs, default=str))  # as run.json will hold it (tuples -> lists)
    record = p.stages.get(name) or {}
    same = record.get("inputs") == inputs and name not in p.redo
    if same and record.get("status") == "complete" and _intact(record):
        log.info("%s: inputs unchanged and outputs complete; skipped", name)
        return Outcome(name, "skipped", 0.0, Path(record["output"]), sum(f["size"] for f in record["files"].values()))
    p.stages[name] = {"inputs": inputs, "status": "running"}
    _save(p)
    output = work(same and record.get("status") == "running")
    files = outputs(output)
    p.stages[name] = {"inputs": inputs, "status": "complete", "output": str(output), "files": _file_records(files)}
    _save(p)
    return Outcome(name, "done", 0.0, output, sum(f.stat().st_size for f in files))


def _forget(p: Pipeline, stage: str, out: Path, kind: str, *also: str) -> None:
    """--from STAGE redoes it: what it (and `also`) recorded as written in `out` is deleted first."""
    from tutorforge import outputs

    if stage in p.redo and out.exists():
        claimed = outputs.claim(out, kind, option=f"--from {stage}:")
        for name in (stage, *also):
            claimed.remove(name, f"--from {stage}: redone")


# --- the stages ---------------------------------------------------------------------------------

def _validate(p: Pipeline) -> Outcome:
    from tutorforge.config import validate_file

    report = validate_file(p.config_path)
    for problem in report.warnings:
        log.warning("%s", problem.render(report.source))
    if report.errors or report.config is None:
        from tutorforge.config import ConfigError

        raise ConfigError(report)
    p.cfg = report.config
    from tutorforge.models import check_base_model

    check_base_model(p.config.base_model)  # a damaged base model stops the run here, named
    p.run_dir = Path(p.config.output_dir)
    p.stages = run_dir_of(p).stages
    return Outcome("validate", "done", 0.0, p.config_path, p.config_path.stat().st_size)


def _plan(p: Pipeline) -> Outcome:
    from tutorforge.plan import apply_plan
    from tutorforge.support import check_config_model

    check_config_model(p.config, str(p.config_path))  # export and package must take it, before training
    asked = p.config.tutorforge.compare.prompts
    if not asked and not p.config.val_set_size:  # compare must have prompts: found now, not after training
        raise UserError(f"{p.config_path}: val_set_size is 0, so the compare stage has no held-out rows to ask; "
                        "set tutorforge.compare.prompts to a JSONL of prompts, or val_set_size (e.g. 0.1)")
    if asked and not Path(asked).is_file():
        raise UserError(f"{p.config_path}: tutorforge.compare.prompts: {asked} is not a file (from {Path.cwd()})")

    p.cfg, p.decisions = apply_plan(p.config, ignore=p.ignore_plan)
    for decision in p.decisions:
        log.info("plan: %s", decision)
    return Outcome("plan", "done", 0.0)


def _train(p: Pipeline) -> Outcome:
    from tutorforge.train import train

    if "train" in p.redo:  # --from train: start over, no checkpoint
        for stale in ("run.json", "checkpoints", "adapter", "model", "metrics.jsonl"):
            target = p.run_dir / stale
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        p.stages = {}
    before = run_dir_of(p).training()
    with p.progress("training", "steps") as progress:
        trained = train(p.config, config_dir=p.config_path.parent, resume=True, progress=progress,
                        decisions=p.decisions)
    after = run_dir_of(p).training()
    skipped = before.get("status") == "complete" and before.get("fingerprint") == after.get("fingerprint")
    if not skipped:
        p.stages = {}  # a new adapter or model: every later stage is stale
    files = sorted(f for f in trained.iterdir() if f.is_file())
    p.stages["train"] = {"inputs": after.get("fingerprint"), "status": "complete", "output": str(trained),
                         "files": _file_records(files)}
    _save(p)
    return Outcome("train", "skipped" if skipped else "done", 0.0, trained, sum(f.stat().st_size for f in files))


NOTHING_TO_MERGE = "a full fine-tune (adapter unset): model/ is the whole trained model, exported as it is"


def _merge(p: Pipeline) -> Outcome:
    from tutorforge.merge import merge
    from tutorforge.models import resolve_base_model

    run = run_dir_of(p)
    out = run.merged
    if run.full:
        log.info("merge: skipped: %s", NOTHING_TO_MERGE)
        p.stages["merge"] = {"inputs": digest(p.stages.get("train")), "status": "skipped", "reason": NOTHING_TO_MERGE}
        _save(p)
        return Outcome("merge", "skipped", 0.0, reason=NOTHING_TO_MERGE)

    def work(resume: bool) -> Path:  # merge itself rebuilds a merged/ of other inputs
        _forget(p, "merge", out, "merged")
        with p.progress("merging", "tensors") as progress:
            return merge(resolve_base_model(p.config.base_model).path, run.adapter, out, progress=progress)

    return _stage(p, "merge", {"adapter": digest(p.stages.get("train"))}, work,
                  lambda d: sorted(f for f in d.iterdir() if f.is_file()))


def _export(p: Pipeline) -> Outcome:
    from tutorforge.export import check_verification, export_run

    settings = dataclasses.asdict(p.config.tutorforge.export)
    run = run_dir_of(p)
    out = run.gguf_dir

    def work(resume: bool) -> Path:  # export keeps only the files made from this same model
        _forget(p, "export", out, "gguf", "package")
        with p.progress("exporting", "tensors") as progress:
            report = export_run(p.run_dir, verify=p.config.tutorforge.export.verify, progress=progress)
        check_verification(report, out)
        return run.gguf()

    def outputs(_: Path) -> list[Path]:
        report = json.loads((out / "export.json").read_text())
        return [Path(f) for f in report["files"].values()] + [out / "export.json"]

    model = {"model": digest(p.stages.get("train"))} if run.full else {"merged": digest(p.stages.get("merge"))}
    return _stage(p, "export", {**model, "settings": settings}, work, outputs)



def _package(p: Pipeline) -> Outcome:
    from tutorforge.ollama import package

    run = run_dir_of(p)
    gguf = run.gguf()
    settings = {"ollama": dataclasses.asdict(p.config.tutorforge.ollama), "chat_template": p.config.chat_template,
                "system": p.config.default_system_message, "sequence_len": p.config.sequence_len}

    def work(resume: bool) -> Path:
        return package(run, gguf)

    return _stage(p, "package", {"gguf": digest(p.stages.get("export")).get(gguf.name), "settings": settings},
                  work, lambda path: [path])


def _compare(p: Pipeline) -> Outcome:
    from tutorforge import compare as ab
    from tutorforge import prompts
    from tutorforge.report import write_outputs

    run = run_dir_of(p)
    out = run.compare_dir
    rows, target = prompts.prompts_and_target(p.config, p.config_path.parent, settings=p.config.tutorforge.compare)
    settings = {**dataclasses.asdict(p.config.tutorforge.compare), "target_words": target}
    inputs = {"tuned": digest(p.stages.get("export")), "rows": [(r.instruction, r.input, r.output) for r in rows],
              "settings": settings, "system": p.config.default_system_message}
    if conversations := prompts.conversations_hash(rows):  # the earlier turns the rows leave out
        inputs["conversations"] = conversations

    def work(resume: bool) -> Path:
        def compare():
            base, tuned, unquantized = generators(p)
            with p.progress("comparing", "prompts") as progress:
                comparison = ab.run_comparison(base, tuned, rows, target_words=target,
                                               max_new_tokens=p.config.tutorforge.compare.max_new_tokens,
                                               system=p.config.default_system_message, unquantized=unquantized,
                                               progress=progress)
                return write_outputs(comparison, out)

        _forget(p, "compare", out, "compare")
        result = ab.compare_once(out, inputs, compare, protect=[run.trained])
        (out / "table.txt").write_text(result.table() + "\n")
        return out / "report.html"

    outcome = _stage(p, "compare", inputs, work,
                     lambda _: [out / n for n in ("results.jsonl", "report.md", "report.html", "table.txt")])
    p.comparison = (out / "table.txt").read_text().rstrip()
    return outcome


def generators(p: Pipeline):
    """Base and tuned, both as the GGUF that Ollama would run (the tuned export's quantisation,
    the base exported by the same writer), prompted exactly as in training; and the tuned model's
    unquantised GGUF when what Ollama runs is a quantisation of it (else None)."""
    from tutorforge.compare import unquantized_export
    from tutorforge.evaluate import GGUFGenerator
    from tutorforge.export import Source, export_model
    from tutorforge.llamacpp import shared_threads
    from tutorforge.models import resolve_base_model
    from tutorforge.rundir import gguf_file
    from tutorforge.tokenizer import run_tokenizer

    quant = p.config.tutorforge.ollama.quantization
    base_dir = resolve_base_model(p.config.base_model).path
    identity = [str(base_dir.resolve()), quant] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                                   for f in sorted(base_dir.glob("*.safetensors"))]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    run = run_dir_of(p)
    base_out = run.compare_dir / f"base-{key}"  # one export of the base, reused while it is the same
    base_gguf = gguf_file(base_out, "base", quant)
    if not base_gguf.is_file():
        with p.progress("exporting the base", "tensors") as progress:
            export_model(Source(base_dir), base_out, name="base", outtype="f16", quantizations=(quant,),
                         progress=progress)
        if quant != "f16":
            gguf_file(base_out, "base", "f16").unlink(missing_ok=True)
    # the tokenizer the run trained with, for both: the same prompts, cut at the same end token
    tokenizer = run_tokenizer(*run.tuned(), trust_remote_code=p.config.trust_remote_code)
    plain = unquantized_export(run.gguf())
    kwargs = {"tokenizer": tokenizer, "chat_template": p.config.chat_template,
              "system": p.config.default_system_message, "n_ctx": max(p.config.sequence_len, 1024),
              "repeat_penalty": p.config.tutorforge.ollama.repeat_penalty,
              "repeat_last_n": p.config.tutorforge.ollama.repeat_last_n,  # decoded as Ollama will
              "threads": shared_threads(3 if plain else 2)}  # the models answer side by side
    return (GGUFGenerator(base_gguf, name=f"{quant} GGUF", **kwargs),
            GGUFGenerator(run.gguf(), name=f"{quant} GGUF", **kwargs),
            GGUFGenerator(plain, name=f"{p.config.tutorforge.export.outtype} GGUF", **kwargs) if plain else None)
