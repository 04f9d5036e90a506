"""The report of a base-vs-tuned comparison: report.md, a self-contained report.html, results.jsonl
and summary.json, written atomically; `compare_models` runs `tutorforge compare` to that report.

    html = render_html(comparison)      # one file: inline CSS, inline SVG charts, no scripts, no URLs
    write_outputs(run_comparison(base, tuned, rows, ...), Path("report/"))
    comparison, out = compare_models(cfg, config_dir, base="smollm2", tuned="outputs/run")

compare.py computes the comparison (answers, metrics, aggregates); this module only renders and
writes it, so it imports compare and never the other way round. The HTML shows the aggregates (a
table with deltas and bar charts) and, for every prompt, both answers side by side with their
metrics and code highlighted by pygments (inline styles); a follow-up question shows its
conversation's earlier turns (compactly, each cut to HISTORY_CHARS) above it. All model text is
untrusted: it is escaped everywhere (pygments escapes the code it highlights).
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.compare import METRICS, Comparison
from tutorforge.errors import UserError

if TYPE_CHECKING:
    from tutorforge.config import Config

FENCED = re.compile(r"^```[ \t]*([\w+.-]*)[ \t]*\n(.*?)(?:^```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
PERCENT_KEYS = [k for k in METRICS if k.endswith("_pct")]
SCALAR_KEYS = ["mean_words", "mean_chrf", "perplexity"]
LOWER_IS_BETTER = {"perplexity"}
NEUTRAL = {"mean_words"}  # brevity_pct says whether lengths hit the target
COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4"}
HISTORY_CHARS = 240  # an earlier turn shown above a follow-up question is cut here (the full text: results.jsonl)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px} .muted{color:#666}
table.agg{border-collapse:collapse;margin:8px 0} .agg td,.agg th{padding:4px 10px;border-bottom:1px solid #e3e3e3}
.agg td.n{text-align:right;font-variant-numeric:tabular-nums} .good{color:#17803d} .bad{color:#b42318}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.prompt{border:1px solid #ddd;border-radius:8px;padding:12px;margin:14px 0}
.prompt h3{font-size:15px;margin:0 0 6px} .pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.side{min-width:0;border-top:3px solid #ccc;padding-top:6px} .side.tuned{border-color:#1f77b4}
.badges span{display:inline-block;font-size:12px;background:#f1f1f1;border-radius:4px;padding:1px 6px;
  margin:0 4px 4px 0}
.badges .fail{background:#fde2e1;color:#8a1c14} .badges .pass{background:#dcf5e3;color:#14532d}
.prose{white-space:pre-wrap;overflow-wrap:anywhere} .highlight pre{overflow-x:auto;padding:8px;margin:6px 0}
details{margin:6px 0} .sandbox{font-size:12px;color:#8a1c14;white-space:pre-wrap}
.history{border-left:3px solid #ddd;padding:2px 0 2px 8px;margin:0 0 8px;font-size:13px;color:#444}
.history .role{font-weight:600;margin-right:6px;color:#666}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _delta_class(key: str, delta: float | None) -> str:
    if delta is None or delta == 0 or key in NEUTRAL:
        return ""
    better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
    return "good" if better else "bad"


# --- Markdown ------------------------------------------------------------------------------------

def _md_cell(text: str, limit: int = 70) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("`", "'").replace("<", "&lt;")


def _quoted(system: str | None) -> str:
    return f'"{_md_cell(system, 200)}"' if system else "(none)"


def _cut(text: str, limit: int = HISTORY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md_history(records: list[dict]) -> list[str]:
    """Each follow-up question in its context: the earlier turns, one line each, then the question."""
    lines = []
    for r in records:
        if turns := r.get("history"):
            lines += [f"- prompt {r['index'] + 1}:"] + [f"  - {t['role']}: {_md_cell(t['content'], 120)}"
                                                        for t in turns]
            lines.append(f"  - **user (asked)**: {_md_cell(r['instruction'], 120)}")
    return ["", "## Follow-up questions in their conversations", ""] + lines if lines else []


def _md_prompt(r: dict) -> str:
    turns = len(r.get("history") or ())
    return _md_cell(f"[after {turns} turns] {r['instruction']}" if turns else r["instruction"])


def _code_summary(m: dict) -> str:
    if not m["has_code"]:
        return "no code"
    kinds = ",".join(b["kind"] for b in m["sandbox"])
    if m["outputs_match"] is None:
        return kinds
    return f"{kinds} (outputs {'match' if m['outputs_match'] else 'differ'})"


def render_markdown(c) -> str:
    s = c.settings
    lines = [f"# Base vs tuned: {_md_cell(c.names['base'])} vs {_md_cell(c.names['tuned'])}", "",
             f"{s.get('prompts')} prompts, {s.get('decoding', 'greedy')}, max_new_tokens {s.get('max_new_tokens')}, "
             f"brevity target {s.get('target_words')} words, system prompt: "
             f"{_quoted(s.get('system'))}. Code ran in the sandbox ({s.get('sandbox_limits', '')}).",
             "", "| metric | base | tuned | delta (tuned - base) |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {b} | {t} | {d} |" for label, b, t, d in c.rows()]
    if drift := c.quantization_drift():
        lines += ["", f"{drift[0].upper()}{drift[1:]}."]
    lines += ["", "## Per prompt", "",
              "| # | prompt | words base / tuned | chrF base / tuned | stopped base / tuned | code base | code tuned |",
              "|---:|---|---:|---:|---|---|---|"]
    for r in c.records:
        b, t = r["base"], r["tuned"]
        lines.append(f"| {r['index'] + 1} | {_md_prompt(r)} | {b['words']} / {t['words']} | "
                     f"{_num(b['chrf'])} / {_num(t['chrf'])} | {'yes' if b['stopped'] else 'cut'} / "
                     f"{'yes' if t['stopped'] else 'cut'} | {_code_summary(b)} | {_code_summary(t)} |")
    lines += _md_history(c.records)
    failures = [(r, side, blk) for r in c.records for side in ("base", "tuned")
                for blk in r[side]["sandbox"] if blk["kind"] != "ok"]
    lines += ["", "## Code that did not run as stated", ""]
    lines += [f"- prompt {r['index'] + 1}, {side}: {blk['kind']}: {_md_cell(blk['detail'], 160)}"
              for r, side, blk in failures] or ["None."]
    lines += ["", "Both answers in full, side by side: report.html; every number: results.jsonl.", ""]
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------------

def highlight_code(code: str, language: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language or "text")
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(noclasses=True))


def render_answer(text: str) -> str:
    """Prose escaped, fenced code highlighted (an unclosed last fence runs to the end)."""
    parts, pos = [], 0
    for m in FENCED.finditer(text):
        if m.start() > pos and text[pos:m.start()].strip():
            parts.append(f'<div class="prose">{_e(text[pos:m.start()].strip())}</div>')
        parts.append(highlight_code(m.group(2), m.group(1).lower()))
        pos = m.end()
    if text[pos:].strip():
        parts.append(f'<div class="prose">{_e(text[pos:].strip())}</div>')
    return "\n".join(parts) or '<div class="prose muted">(empty answer)</div>'


def _badge(label: str, state: bool | None = None) -> str:
    cls = "" if state is None else ' class="pass"' if state else ' class="fail"'
    return f"<span{cls}>{_e(label)}</span>"


def _badges(m: dict, target: int) -> str:
    items = [_badge(f"{m['words']} words", m["brief"]),
             _badge("stopped" if m["stopped"] else "cut at max tokens", m["stopped"])]
    if m["has_code"]:
        items += [_badge("parses", m["code_parses"]), _badge("runs", m["code_runs"])]
        if m["outputs_match"] is not None:
            items.append(_badge("outputs match" if m["outputs_match"] else "outputs differ", m["outputs_match"]))
    else:
        items.append(_badge("no code"))
    if m["chrf"] is not None:
        items.append(_badge(f"chrF {m['chrf']:.1f}"))
    return f'<div class="badges" title="brevity target {target} words">{"".join(items)}</div>'


def _side(name: str, side: str, m: dict, target: int) -> str:
    failures = "".join(f'<div class="sandbox">{_e(b["kind"])}: {_e(b["detail"])}</div>'
                       for b in m["sandbox"] if b["kind"] != "ok")
    return (f'<div class="side {side}"><strong>{side}</strong> <span class="muted">{_e(name)}, '
            f'{m["new_tokens"]} tokens, {m["seconds"]:.1f} s</span>{_badges(m, target)}{failures}'
            f'{render_answer(m["text"])}</div>')


def _history(turns: list[dict]) -> str:
    """The earlier turns of a follow-up question, one line each (cut to HISTORY_CHARS)."""
    if not turns:
        return ""
    lines = "".join(f'<div class="turn"><span class="role">{_e(t["role"])}</span><span class="prose">'
                    f'{_e(_cut(t["content"]))}</span></div>' for t in turns)
    return f'<div class="history"><div class="muted">after {len(turns)} earlier turns:</div>{lines}</div>'


def _prompt_section(r: dict, names: dict, target: int) -> str:
    prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
    reference = (f"<details><summary>reference answer</summary>{render_answer(r['reference'])}</details>"
                 if r["reference"] else "")
    return (f'<section class="prompt">{_history(r.get("history") or [])}'
            f'<h3>{r["index"] + 1}. <span class="prose">{_e(prompt)}</span></h3>'
            f'<div class="muted">{_e(r["source"])}</div>{reference}<div class="pair">'
            f'{_side(names["base"], "base", r["base"], target)}{_side(names["tuned"], "tuned", r["tuned"], target)}'
            "</div></section>")


def bar_chart(title: str, items: list[tuple[str, float | None, float | None]], *, top: float | None = None,
              width: int = 520) -> str:
    """An inline SVG of grouped horizontal bars (base grey, tuned blue), one group per item."""
    top = top or max([v for _, b, t in items for v in (b, t) if v is not None] + [1e-9])
    left, bar, gap = 230, 12, 10
    height = 28 + len(items) * (2 * bar + gap) + 18
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{_e(title)}"><text x="0" y="14" font-size="13" font-weight="600">{_e(title)}</text>']
    y = 26
    for label, *values in items:
        out.append(f'<text x="{left - 6}" y="{y + bar + 3}" font-size="11" text-anchor="end">{_e(label)}</text>')
        for side, value in zip(("base", "tuned"), values, strict=False):
            w = 0 if value is None else max(0.0, value) / top * (width - left - 60)
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS[side]}"/>'
                       f'<text x="{left + w + 4:.1f}" y="{y + bar - 2}" font-size="10">{_num(value)}</text>')
            y += bar
        y += gap
    out.append(f'<rect x="{left}" y="{y + 2}" width="10" height="10" fill="{COLORS["base"]}"/>'
               f'<text x="{left + 14}" y="{y + 11}" font-size="11">base</text>'
               f'<rect x="{left + 60}" y="{y + 2}" width="10" height="10" fill="{COLORS["tuned"]}"/>'
               f'<text x="{left + 74}" y="{y + 11}" font-size="11">tuned</text></svg>')
    return "".join(out)


def _charts(c) -> str:
    target = c.settings.get("target_words")
    agg = c.aggregates
    pct = [(METRICS[k].format(target=target).split(" (")[0], agg["base"].get(k), agg["tuned"].get(k))
           for k in PERCENT_KEYS]  # short labels; the table above has the denominators
    charts = [bar_chart("answers (%)", pct, top=100.0)]
    for k in SCALAR_KEYS:
        charts.append(bar_chart(METRICS[k], [(k.replace("_", " "), agg["base"].get(k), agg["tuned"].get(k))],
                                width=360))
    return f'<div class="charts">{"".join(charts)}</div>'


def _aggregate_table(c) -> str:
    rows = []
    for key, (label, b, t, d) in zip(METRICS, c.rows(), strict=False):
        cls = _delta_class(key, c.delta(key))
        rows.append(f'<tr><td>{_e(label)}</td><td class="n">{_e(b)}</td><td class="n">{_e(t)}</td>'
                    f'<td class="n {cls}">{_e(d)}</td></tr>')
    return ('<table class="agg"><tr><th>metric</th><th>base</th><th>tuned</th><th>delta (tuned - base)</th></tr>'
            + "".join(rows) + "</table>")


def render_html(c) -> str:
    s, target = c.settings, c.settings.get("target_words", 0)
    summary = (f"{s.get('prompts')} prompts, {_e(s.get('decoding', 'greedy'))}, max_new_tokens "
               f"{s.get('max_new_tokens')}, brevity target {target} words, system prompt: "
               f"<em>{_e(repr(s['system']) if s.get('system') else '(none)')}</em>. Code ran in the sandbox "
               f"({_e(s.get('sandbox_limits', ''))}); {s.get('seconds', '?')} s in all.")
    body = "\n".join(_prompt_section(r, c.names, target) for r in c.records)
    drift = f'<p class="drift">{_e(d[0].upper() + d[1:])}.</p>' if (d := c.quantization_drift()) else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>base vs tuned: {_e(c.names['base'])} vs {_e(c.names['tuned'])}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<h1>{_e(c.names['base'])} <span class=\"muted\">vs</span> {_e(c.names['tuned'])}</h1>"
            f"<p class=\"muted\">{summary}</p><h2>Aggregates</h2>{_aggregate_table(c)}{drift}{_charts(c)}"
            f"<h2>Answers, side by side</h2>{body}</body></html>\n")


# --- the report's files ------------------------------------------------------------------------

def write_outputs(comparison: Comparison, out_dir: Path) -> Comparison:
    """Write results.jsonl, report.md, report.html and summary.json (compare.REPORT_FILES) to
    out_dir, each atomically; returns the comparison, its out_dir set."""
    from tutorforge.fsutil import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "results.jsonl") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in comparison.records)
    with atomic_write(out_dir / "report.md") as fh:
        fh.write(render_markdown(comparison))
    with atomic_write(out_dir / "report.html") as fh:
        fh.write(render_html(comparison))
    with atomic_write(out_dir / "summary.json") as fh:
        json.dump({"names": comparison.names, "aggregates": comparison.aggregates,
                   "settings": comparison.settings}, fh, indent=1)
    comparison.out_dir = out_dir
    return comparison


def _compared(specs: list[tuple[str, str | Path, Path | None]], kwargs: dict, rows: list, *, target: int,
              max_new_tokens: int, out: Path, progress) -> Comparison:
    """Open each (name, model, adapter) as a Generator (base, tuned, then the tuned model's
    unquantised export when there is one), compare them, write the report, close them."""
    from tutorforge import compare
    from tutorforge.evaluate import open_generator

    gens = []
    try:
        for name, spec, adapter in specs:
            gens.append(open_generator(spec, adapter=adapter, name=name, **kwargs))
        comparison = compare.run_comparison(gens[0], gens[1], rows, target_words=target,
                                            max_new_tokens=max_new_tokens, system=kwargs["system"],
                                            unquantized=gens[2] if len(gens) > 2 else None, progress=progress)
        return write_outputs(comparison, out)
    finally:
        for gen in gens:
            getattr(gen, "close", lambda: None)()


def compare_models(cfg: Config | None, config_dir: Path | None, *, base: str | None = None, tuned: str | None = None,
                   tuned_adapter: Path | None = None, prompts: Path | None = None, out: Path | None = None,
                   max_new_tokens: int | None = None, max_prompts: int | None = None,
                   target_words: int | None = None, threads: int | None = None, gpu_layers: int | None = None,
                   progress=None) -> tuple[Comparison, Path]:
    """`tutorforge compare`: base and tuned (from the arguments, else the config, else the tuned
    run's run.json) answer the prompts (a GGUF in llama.cpp with these threads and GPU layers, which
    greedy answers do not depend on); returns the comparison and the directory of its report (kept
    as it is when made from the same models, prompts and settings)."""
    from tutorforge import compare
    from tutorforge import prompts as asked
    from tutorforge.config import CompareSettings, TutorforgeSettings
    from tutorforge.llamacpp import shared_threads
    from tutorforge.models import resolve_base_model
    from tutorforge.outputs import rows_hash
    from tutorforge.rundir import RunDir
    from tutorforge.tokenizer import tokenizer_dir as run_tokenizer_dir

    base, tuned = base or (cfg and cfg.base_model), tuned or (cfg and cfg.output_dir)
    if not (base and tuned):
        raise UserError("compare needs --base and --tuned, or a config (its base_model and output_dir)")
    run = RunDir.find(Path(tuned))
    source = cfg or (run.cfg if run else None)  # whose settings, prompt format and tokenizer
    settings = source.tutorforge.compare if source else CompareSettings()
    rows, target = asked.prompts_and_target(cfg, config_dir, settings=settings, prompts=prompts,
                                              target_words=target_words, max_prompts=max_prompts)
    out = out or (run.compare_dir if run else RunDir.for_config(cfg).compare_dir if cfg else None)
    if out is None:
        raise UserError("compare: say where the report goes with --out DIR")
    source_run = run or (RunDir.for_config(source) if source else None)
    trained = tuned_adapter or (source_run.trained if source_run else None)
    tokenizer_dir = run_tokenizer_dir(resolve_base_model(source.base_model).path, trained) if source else None
    decoding = (source.tutorforge if source else TutorforgeSettings()).ollama  # GGUFs decode as Ollama will
    kwargs = {"tokenizer_dir": tokenizer_dir, "chat_template": source.chat_template if source else None,
              "system": source.default_system_message if source else None,
              "repeat_penalty": decoding.repeat_penalty, "repeat_last_n": decoding.repeat_last_n}
    if source and source.trust_remote_code:  # config key: a tokenizer defined by the model's own code
        kwargs["trust_remote_code"] = True
    def label(spec) -> str:  # a GGUF by its directory and file: model.Q4_K_M.gguf alone says little
        return f"{Path(spec).parent.name}/{Path(spec).name}" if Path(spec).suffix == ".gguf" else Path(spec).name

    names = [label(base), label(tuned)]
    max_new_tokens = max_new_tokens or settings.max_new_tokens
    inputs = {"base": compare.model_inputs(base), "tuned": compare.model_inputs(tuned, tuned_adapter),
              "names": names, "rows": rows_hash(rows), "target_words": target, "max_new_tokens": max_new_tokens,
              "chat_template": kwargs["chat_template"], "system": kwargs["system"],
              "repeat": [kwargs["repeat_penalty"], kwargs["repeat_last_n"]]}
    if conversations := asked.conversations_hash(rows):  # the earlier turns rows_hash leaves out
        inputs["conversations"] = conversations
    # a quantised tuned GGUF answers beside the unquantised export it was made from
    plain = compare.unquantized_export(Path(tuned)) if Path(tuned).suffix == ".gguf" else None
    if plain:
        inputs["unquantized"] = compare.model_inputs(plain)
    # what it reads is never written over: the models and adapters (a training run's own compare/
    # is the default report directory, so of a run only what training wrote is protected)
    is_run = run is not None or (cfg is not None and Path(tuned) == Path(cfg.output_dir))
    readers = [Path(base), source_run.trained if is_run and source_run else Path(tuned), tuned_adapter,
               tokenizer_dir]
    protect = [p for p in readers if p is not None and Path(p).exists()]

    specs = [(names[0], base, None), (names[1], tuned, tuned_adapter)]
    specs += [(label(plain), plain, None)] if plain else []
    runtime = {"threads": threads or shared_threads(len(specs)), "gpu_layers": gpu_layers}  # side by side

    def work() -> Comparison:
        return _compared(specs, {**kwargs, **runtime}, rows, target=target, max_new_tokens=max_new_tokens,
                         out=Path(out), progress=progress)

    return compare.compare_once(out, inputs, work, protect=protect), out
