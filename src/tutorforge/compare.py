"""A/B comparison of a base and a tuned model at temperature 0, with the answers' code actually run.

    tutorforge compare recipes/python-tutor-smollm2-cpu.yml      # base_model vs output_dir, held-out split
    tutorforge compare --base smollm2 --tuned model.Q4_K_M.gguf --prompts my.jsonl --out report/

Both models answer every prompt greedily with the same prompt format and system prompt. Each answer
is measured (`score_answer`): words, brevity (at most `target_words`), stopped by the end token or
cut at max_new_tokens, has a ```python block, the code parses, runs in the sandbox, and prints what
it says it prints, and chrF against the reference answer (sacrebleu) where there is one. Per model:
the perplexity of the reference answers. `run_comparison` returns a `Comparison` (one record per
prompt, both answers and their metrics, and the aggregates); report.py writes it out (results.jsonl,
report.md, report.html, summary.json) and `compare_once` keeps a report made from the same inputs.
`Comparison.table()` is the terminal table of aggregates with the delta tuned - base.

Prompts are Alpaca rows, or conversations (rows of messages, read as training reads them): a
conversation's last user turn is the prompt, the turns before it its history (which both models see
whole, rendered with the chat template), the assistant turn after it, if any, the reference.
"""
from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge import sandbox
from tutorforge.errors import UserError
from tutorforge.prompts import history

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# aggregate key -> label in tables and reports ({target} is the brevity target in words)
METRICS: dict[str, str] = {
    "brevity_pct": "brevity: at most {target} words (%)",
    "mean_words": "mean words",
    "stopped_pct": "stopped by the end token (%)",
    "has_code_pct": "has a Python block (%)",
    "code_parses_pct": "code parses (% of answers with code)",
    "code_runs_pct": "code runs (% of answers with code)",
    "outputs_match_pct": "stated outputs match (% of those stating any)",
    "mean_chrf": "chrF vs the reference (mean)",
    "perplexity": "perplexity of the references",
}
RUNS = ("ok", "mismatch")  # sandbox kinds of code that ran to the end
# the side of the tuned model's unquantised export (f16), answered beside the shipped quantisation
# so that what quantisation changes is told apart from what the fine-tune did
UNQUANTIZED = "tuned_unquantized"


@dataclass(frozen=True)
class AnswerMetrics:
    words: int
    brief: bool  # words <= target_words
    stopped: bool  # ended by the end token (else cut at max_new_tokens)
    new_tokens: int
    has_code: bool  # at least one ```python block (an unclosed one, cut at max tokens, counts)
    code_parses: bool | None  # None: no code
    code_runs: bool | None
    outputs_stated: bool  # some block says what it prints (`print(x)  # 42` or `# Output:`)
    outputs_match: bool | None  # None: nothing stated
    chrf: float | None  # None: no reference
    sandbox: tuple[dict, ...] = ()  # per block: {"kind", "detail"}


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of an answer; an unclosed last fence (cut at max tokens) counts too."""
    if len(re.findall(r"^```", text, re.MULTILINE)) % 2:
        text += "\n```"
    return [b.code for b in sandbox.find_blocks(text) if b.language in sandbox.PYTHON_TAGS]


def _states_output(code: str) -> bool:
    try:
        per_line, block = sandbox.stated_outputs(code)
    except (SyntaxError, ValueError):
        return False
    return bool(per_line) or block is not None


def chrf(text: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(text, [reference]).score


def score_answer(answer, reference: str | None, *, target_words: int, timeout_s: int = 5) -> dict:
    """The AnswerMetrics of one Answer (as a dict): its code runs in the sandbox; a sandbox failure
    (timeout, memory, error, ...) is recorded, never raised."""
    text = answer.text
    blocks = python_blocks(text)
    results = sandbox.check_blocks(blocks, timeout_s=timeout_s) if blocks else []
    stated = [_states_output(code) for code in blocks]
    words = len(text.split())
    metrics = AnswerMetrics(
        words=words, brief=words <= target_words, stopped=answer.stopped, new_tokens=answer.new_tokens,
        has_code=bool(blocks),
        code_parses=all(r.kind != "syntax" for r in results) if blocks else None,
        code_runs=all(r.kind in RUNS for r in results) if blocks else None,
        outputs_stated=any(stated),
        outputs_match=all(r.kind == "ok" for r, s in zip(results, stated, strict=False) if s) if any(stated) else None,
        chrf=chrf(text, reference) if reference else None,
        sandbox=tuple({"kind": r.kind, "detail": r.detail} for r in results))
    return asdict(metrics)


def _pct(flags: Sequence[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return 100.0 * sum(known) / len(known) if known else None


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(statistics.fmean(known)) if known else None


def aggregate(metrics: list[dict], perplexity: float | None, seconds: list[float]) -> dict[str, float | None]:
    """Aggregates of one model's answers (None where nothing applies, e.g. no answer has code)."""
    return {
        "answers": float(len(metrics)),
        "brevity_pct": _pct([m["brief"] for m in metrics]),
        "mean_words": _mean([m["words"] for m in metrics]),
        "stopped_pct": _pct([m["stopped"] for m in metrics]),
        "has_code_pct": _pct([m["has_code"] for m in metrics]),
        "code_parses_pct": _pct([m["code_parses"] for m in metrics]),
        "code_runs_pct": _pct([m["code_runs"] for m in metrics]),
        "outputs_match_pct": _pct([m["outputs_match"] for m in metrics]),
        "mean_chrf": _mean([m["chrf"] for m in metrics]),
        "perplexity": perplexity,
        "mean_new_tokens": _mean([m["new_tokens"] for m in metrics]),
        "seconds_per_answer": _mean(seconds),
    }


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}" if abs(value) < 1e4 else f"{value:.3g}"


@dataclass
class Comparison:
    names: dict[str, str]  # {"base": ..., "tuned": ...}
    records: list[dict]  # one per prompt, as in results.jsonl
    aggregates: dict[str, dict[str, float | None]]  # {"base": {...}, "tuned": {...}}
    settings: dict = field(default_factory=dict)  # target_words, max_new_tokens, system, seconds, ...
    out_dir: Path | None = None

    def delta(self, key: str) -> float | None:
        b, t = self.aggregates["base"].get(key), self.aggregates["tuned"].get(key)
        return None if b is None or t is None else t - b

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(label, base, tuned, delta) for every aggregate in METRICS."""
        target = self.settings.get("target_words", "?")
        return [(label.format(target=target), _cell(self.aggregates["base"].get(key)),
                 _cell(self.aggregates["tuned"].get(key)), _cell(self.delta(key), signed=True))
                for key, label in METRICS.items()]

    def quantization_drift(self) -> str | None:
        """How the tuned model's code-run rate moves from its unquantised export to the shipped
        quantisation, when the comparison answered with both (else None)."""
        unq = self.aggregates.get(UNQUANTIZED)
        if not unq:
            return None
        shipped, plain = self.aggregates["tuned"].get("code_runs_pct"), unq.get("code_runs_pct")

        def rate(side: str, pct: float | None) -> str:
            flags = [r[side]["code_runs"] for r in self.records if r[side]["code_runs"] is not None]
            return f"{_cell(pct)}% ({sum(flags)} of {len(flags)} with code)" if flags else "- (no answer has code)"

        moved = "" if shipped is None or plain is None else f": quantisation moves it {shipped - plain:+.1f} points"
        return (f"tuned, code runs: {rate(UNQUANTIZED, plain)} with its unquantised export "
                f"({self.names[UNQUANTIZED]}), {rate('tuned', shipped)} with {self.names['tuned']}{moved}")

    def table(self) -> str:
        """The aggregates as an aligned text table with the delta tuned - base."""
        header = ("metric", f"base ({self.names['base']})", f"tuned ({self.names['tuned']})", "delta")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"{r[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=False))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        n = int(self.aggregates["base"]["answers"] or 0)
        lines.append(f"{n} prompts, greedy, max_new_tokens {self.settings.get('max_new_tokens')}; "
                     "delta = tuned - base")
        if drift := self.quantization_drift():
            lines.append(drift)
        return "\n".join(lines)


def _answer_record(answer, seconds: float, metrics: dict) -> dict:
    return {"text": answer.text, "seconds": round(seconds, 3), **metrics}


def _answer(gen, row, *, system: str | None, max_new_tokens: int, target_words: int) -> tuple[dict, float]:
    """One Generator's answer to a row (after its history, where it has one), scored."""
    earlier = history(row)
    extra = {"history": earlier} if earlier else {}  # an Alpaca row asks exactly as before
    t0 = time.perf_counter()
    try:
        out = gen.generate(row.instruction, row.input, system=system, max_new_tokens=max_new_tokens, **extra)
    except UserError as exc:
        if not earlier:
            raise
        raise UserError(f"{row.source}: {exc}") from None
    elapsed = time.perf_counter() - t0
    return _answer_record(out, elapsed, score_answer(out, row.output or None, target_words=target_words)), elapsed


def _perplexity(gen, rows: list, system: str | None) -> float | None:
    refs = [r for r in rows if r.output.strip()]
    return gen.perplexity(refs, system=system) if refs else None


def run_comparison(base, tuned, rows: list, *, max_new_tokens: int, target_words: int,
                   system: str | None = None, unquantized=None, progress=None) -> Comparison:
    """Answer every row with both Generators, score both answers, and measure the references'
    perplexity under each model (report.write_outputs writes the result). `unquantized`, the tuned
    model's unquantised export when `tuned` is a quantisation of it, answers too (side UNQUANTIZED:
    its answers scored, no perplexity), so that quantisation's drift is told apart from the tuning."""
    if not rows:
        raise UserError("compare: no prompts to compare on")
    sandbox.require_sandbox()  # model-written code runs here: no sandbox, no comparison
    started = time.time()
    sides = [("base", base), ("tuned", tuned)] + ([(UNQUANTIZED, unquantized)] if unquantized else [])
    records, seconds = [], {side: [] for side, _ in sides}

    def answer(side_gen, row) -> tuple[str, dict, float]:
        side, gen = side_gen
        return side, *_answer(gen, row, system=system, max_new_tokens=max_new_tokens, target_words=target_words)

    # the models answer side by side, one thread each (llama.cpp and torch release the GIL)
    with ThreadPoolExecutor(max_workers=len(sides)) as pool:
        for i, row in enumerate(rows):
            earlier = {"history": turns} if (turns := history(row)) else {}  # the follow-up's context
            record = {"index": i, "source": row.source, **earlier, "instruction": row.instruction,
                      "input": row.input, "reference": row.output or None}
            for side, result, elapsed in pool.map(answer, sides, [row] * len(sides)):
                record[side] = result
                seconds[side].append(elapsed)
            records.append(record)
            log.info("compare %d/%d: %s | words %d vs %d", i + 1, len(rows), row.source,
                     record["base"]["words"], record["tuned"]["words"])
            if progress:
                progress(i + 1, len(rows))
        perplexity_of = pool.map(lambda sg: _perplexity(sg[1], rows, system), sides[:2])
        perplexities: dict[str, float | None] = dict(zip(("base", "tuned"), perplexity_of, strict=False))
    aggregates = {side: aggregate([r[side] for r in records], perplexities.get(side), seconds[side])
                  for side, _ in sides}
    settings = {"target_words": target_words, "max_new_tokens": max_new_tokens, "system": system,
                "prompts": len(rows), "seconds": round(time.time() - started, 1), "decoding": "greedy, seed 0",
                "sandbox_limits": sandbox.describe_limits()}
    return Comparison({side: gen.name for side, gen in sides}, records, aggregates, settings)


REPORT_FILES = ("results.jsonl", "report.md", "report.html", "summary.json")


def model_inputs(spec: str | Path, adapter: Path | None = None) -> dict:
    """What a compared model is, by content: a GGUF file's hash, or the identity of a checkpoint (a
    training output_dir: its base + adapter/, or a full fine-tune's model/) plus an optional adapter."""
    from tutorforge import outputs
    from tutorforge.models import resolve_base_model
    from tutorforge.rundir import RunDir

    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return {"gguf": outputs.file_hash(path)}
    if (run := RunDir.find(path)) is not None:  # the trained model: base + adapter/, or model/
        model_dir, trained = run.tuned()
        if adapter is not None:
            model_dir, trained = resolve_base_model(run.cfg.base_model).path, adapter
        return {"model": outputs.model_identity(model_dir, trained)}
    return {"model": outputs.model_identity(resolve_base_model(str(spec)).path, adapter)}


def unquantized_export(gguf: Path) -> Path | None:
    """The unquantised GGUF (f16, bf16 or f32) that the quantised `gguf` was made from, as the
    export.json beside it records; None for an unquantised file or one without that record."""
    try:
        files = json.loads((gguf.parent / "export.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for kind in ("f16", "bf16", "f32"):
        path = Path(files.get(kind) or "")
        candidate = gguf.parent / path.name
        if path.name and candidate.is_file() and candidate.resolve() != gguf.resolve():
            return candidate
    return None


def load_comparison(out_dir: Path) -> Comparison:
    """The Comparison a finished run_comparison wrote to out_dir (results.jsonl, summary.json)."""
    summary = json.loads((out_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    return Comparison(summary["names"], records, summary["aggregates"], summary["settings"], out_dir)


def compare_once(out: Path, inputs: dict, work, *, protect: list[Path]) -> Comparison:
    """The comparison in `out` when it was made from these same inputs (models, prompts, settings),
    else work() writing it anew; refuses an `out` holding anything but a comparison report."""
    from tutorforge import outputs

    claimed = outputs.claim(out, "compare", protect=protect)
    if claimed.reusable("compare", inputs):
        log.info("compare: %s holds the comparison of these same models, prompts and settings; kept", out)
        return load_comparison(out)
    claimed.begin("compare", inputs)
    result = work()
    claimed.add("compare", *(out / name for name in REPORT_FILES))
    claimed.finish("compare")
    return result
