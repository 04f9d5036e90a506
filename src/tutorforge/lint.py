"""`tutorforge data lint`: what a dataset holds, what training would drop, and whether its code runs.

    tutorforge data lint data/python_tutor.jsonl [--config recipe.yml]

Rows and rejects (data.py), token lengths under the model's tokenizer and prompt format against
sequence_len, answer lengths in words, and the code check: every ```python block of an answer runs
in the sandbox (sandbox.py) and what it states it prints is compared with what it printed (with
--no-run-code the blocks are counted and the output says they were not run). Blocks in other
languages and unfenced code are counted as not checked. Any failure makes the exit code 1.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tutorforge import sandbox
from tutorforge.data import LoadReport, load_datasets, load_files
from tutorforge.formatting import PromptFormat, encode_row

FAILING_CODE = ("syntax", "error", "timeout", "memory", "mismatch")


@dataclass(frozen=True)
class Finding:
    source: str
    kind: str
    detail: str

    def render(self) -> str:
        return f"{self.source}: {self.kind}: {self.detail}"


@dataclass
class LintReport:
    load: LoadReport
    sequence_len: int
    model: str
    token_lengths: list[int] = field(default_factory=list)
    output_words: list[int] = field(default_factory=list)
    code: Counter = field(default_factory=Counter)  # ok / syntax / ... / other-language / unfenced / none
    run_code: bool = True  # False: Python blocks counted under "not run"
    languages: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def too_long(self) -> int:
        return sum(n > self.sequence_len for n in self.token_lengths)

    @property
    def failed(self) -> bool:
        return bool(self.load.rejects or self.too_long or any(self.code[k] for k in FAILING_CODE))


def _percentiles(values: list[int], points=(50, 90, 95, 99)) -> str:
    if len(values) < 2:
        return f"max {max(values, default=0)}"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return ", ".join(f"p{p} {cuts[p - 1]:.0f}" for p in points) + f", max {max(values)}"


def answers(row) -> str:
    """What a row teaches the model to write: its output, or a conversation's trained turns."""
    trained = [t.content for t in row.turns if t.trained(row.roles_to_train)]
    return "\n\n".join(trained) if row.turns else row.output


def _code_jobs(report: LintReport) -> list[tuple[str, str]]:
    """(source, code) for every Python block of every answer; counts the rest (other languages,
    unfenced, none)."""
    jobs = []
    for row in report.load.rows:
        text = answers(row)
        blocks = sandbox.find_blocks(text)
        python = [b for b in blocks if b.language in sandbox.PYTHON_TAGS]
        for b in blocks:
            if b.language not in sandbox.PYTHON_TAGS:
                report.languages[b.language or "(no language)"] += 1
                report.code["other-language"] += 1
        if python:
            jobs += [(f"{row.source} block {i + 1}", b.code) for i, b in enumerate(python)]
        elif not blocks:
            report.code["unfenced" if sandbox.looks_like_python(text) else "none"] += 1
    return jobs


def lint(paths: list[Path], *, tokenizer, fmt: PromptFormat, sequence_len: int, model: str,
         run_code: bool = True, workers: int = 2, datasets=(), config_dir: Path | None = None) -> LintReport:
    """Lint `paths`; a file that one of `datasets` (a config's DatasetSpecs) names is read as that
    entry reads it (a conversation dataset as conversations), any other as Alpaca rows."""
    load = load_datasets(datasets, config_dir, only=paths) if datasets else load_files(paths)
    report = LintReport(load, sequence_len, model, run_code=run_code)
    for reject in report.load.rejects:
        report.findings.append(Finding(reject.source, reject.kind, reject.reason))
    for row in report.load.rows:
        length = len(encode_row(tokenizer, fmt, row).input_ids)
        report.token_lengths.append(length)
        report.output_words.append(len(answers(row).split()))
        if length > sequence_len:
            report.findings.append(Finding(row.source, "too_long", f"{length} tokens > sequence_len "
                                           f"{sequence_len}: training drops this row, or cuts it with "
                                           "excess_length_strategy: truncate"))
    jobs = _code_jobs(report)
    if not run_code:
        report.code["not run"] = len(jobs)
    else:
        for (source, _), result in zip(jobs, sandbox.check_blocks([c for _, c in jobs], workers=workers), strict=False):
            report.code[result.kind] += 1
            if not result.ok:
                report.findings.append(Finding(source, result.kind, result.detail))
    return report


def render(report: LintReport, *, max_findings: int = 50) -> str:
    load, code = report.load, report.code
    checked = sum(code[k] for k in ("ok", *FAILING_CODE))
    if report.run_code:
        blocks = (f"python blocks: {checked} run, {code['ok']} ok"
                  + "".join(f", {code[k]} {k}" for k in FAILING_CODE if code[k])
                  + f" (sandbox network isolation: {'on' if sandbox.network_isolated() else 'unavailable'})")
    else:
        blocks = f"python blocks: {code['not run']} found, not run (--no-run-code)"
    lines = [
        load.summary(),
        f"duplicates: {load.counts()['duplicate']} (counted among the rejected)",
        f"tokens ({report.model}, prompt + answer): {_percentiles(report.token_lengths)}; "
        f"{report.too_long} of {len(report.token_lengths)} over sequence_len {report.sequence_len} "
        "(training drops them by default; excess_length_strategy: truncate cuts them, raise stops)",
        f"answer words: {_percentiles(report.output_words, (50, 90))}",
        blocks,
        f"not checked: {code['other-language']} blocks in other languages"
        + (f" ({', '.join(f'{k} {n}' for k, n in report.languages.most_common(6))})" if report.languages else "")
        + f", {code['unfenced']} rows of unfenced Python, {code['none']} rows without code",
    ]
    if report.findings:
        lines.append(f"findings ({len(report.findings)}):")
        lines += ["  " + f.render() for f in report.findings[:max_findings]]
        if len(report.findings) > max_findings:
            lines.append(f"  ... and {len(report.findings) - max_findings} more")
    if report.failed:
        lines.append("FAIL")
    elif report.run_code:
        lines.append("OK: every row usable, every Python block runs as stated")
    else:
        lines.append("OK: every row usable; Python blocks not run (--no-run-code)")
    return "\n".join(lines)
