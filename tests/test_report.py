"""report.py: report.md and a self-contained, escaped report.html that a real browser renders
without a single console message (checked in headless Chromium, with a control page that fails)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tutorforge.compare import Comparison, aggregate, score_answer
from tutorforge.evaluate import Answer
from tutorforge.report import bar_chart, render_answer, render_html, render_markdown

HOSTILE_TEXT = ("Careful: <script>alert('x')</script> and <img src=x onerror=alert(1)> "
                "and a link <a href=\"https://evil.example/\">click</a> & </div></section>")
TUNED = ("A tuple is an immutable sequence.\n\n```python\npoint = (2, 3)\nprint(point[0])  # 2\n```\n\n"
         "Tip: use a tuple for fixed records.")


def _record(i: int, base_text: str, tuned_text: str, reference: str | None) -> dict:
    rec = {"index": i, "source": f"p.jsonl:{i + 1}", "instruction": f"Prompt {i + 1} <b>bold?</b>", "input": "",
           "reference": reference}
    for side, text in (("base", base_text), ("tuned", tuned_text)):
        m = score_answer(Answer(text, len(text.split()), side == "tuned"), reference, target_words=30)
        rec[side] = {"text": text, "seconds": 0.5, **m}
    return rec


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    records = [_record(0, HOSTILE_TEXT, TUNED, "A tuple cannot change.\n\n```python\nprint((1, 2)[1])  # 2\n```"),
               _record(1, "word " * 80, "```python\nwhile True:\n    pass\n```", None)]
    aggregates = {side: aggregate([r[side] for r in records], 9.0 if side == "base" else 4.5, [0.5, 0.5])
                  for side in ("base", "tuned")}
    settings = {"target_words": 30, "max_new_tokens": 96, "system": "Be <brief>.", "prompts": 2, "seconds": 3.0}
    return Comparison({"base": "base <model>", "tuned": "tuned & co"}, records, aggregates, settings)


class Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    return parser


def test_html_is_self_contained(comparison):
    html = render_html(comparison)
    page = parse(html)
    assert not {"script", "link", "img", "iframe", "object", "embed", "a", "form", "base"} & set(page.tags)
    assert not [a for a in page.attrs if a[1] in {"src", "href", "srcset", "action", "xmlns"} or a[1].startswith("on")]
    styles = " ".join(v for _, k, v in page.attrs if k == "style") + html[html.index("<style>"):html.index("</style>")]
    assert "url(" not in styles and "@import" not in styles
    assert page.tags.count("svg") == 4  # the charts are inline SVG


def test_model_text_is_escaped(comparison):
    html = render_html(comparison)
    page = parse(html)
    text = "".join(page.text)
    assert "<script>alert('x')</script>" in text and "<img src=x onerror=alert(1)>" in text  # shown as text
    assert "<b>bold?</b>" in text and "Be <brief>" in text and "base <model>" in text
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert page.tags.count("section") == 2  # the injected </section> closed nothing


def test_code_is_highlighted_and_answers_sit_side_by_side(comparison):
    html = render_html(comparison)
    assert html.count('class="pair"') == 2 and html.count('class="side base"') == 2
    section = html[html.index('class="side tuned"'):]
    assert '<span style="color: #008000">print</span>' in section  # pygments, inline styles
    assert "stated outputs match" in html and "timeout" in html  # the endless loop's sandbox failure
    fragment = render_answer("Intro\n```python\nx = 1\n")  # cut at max tokens: an unclosed fence
    assert fragment.count('class="highlight"') == 1 and "Intro" in fragment


def test_bar_widths_follow_the_values():
    svg = bar_chart("t", [("a", 50.0, 100.0), ("b", None, 25.0)], top=100.0, width=520)
    span = 520 - 230 - 60  # plot width
    assert f'width="{span / 2:.1f}"' in svg and f'width="{span:.1f}"' in svg and f'width="{span / 4:.1f}"' in svg
    assert 'width="0.0"' in svg  # a missing value draws no bar


def test_markdown_report(comparison):
    md = render_markdown(comparison)
    assert "| brevity: at most 30 words (%) | 50.0 | 100.0 | +50.0 |" in md
    assert "| perplexity of the references | 9.0 | 4.5 | -4.5 |" in md
    assert "prompt 2, tuned: timeout" in md
    assert "<script>" not in md


# --- a real browser -------------------------------------------------------------------------------

def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).is_file(), "the report test needs Debian's chromium: apt-get install chromium"
    return path


def render_in_chromium(page: Path, tmp: Path) -> tuple[Path, list[str]]:
    """Screenshot `page` in headless Chromium (no network); return the PNG and every console line."""
    profile, png = tmp / f"profile-{page.stem}", tmp / f"{page.stem}.png"
    profile.mkdir()
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--enable-logging=stderr",
           "--v=0", f"--screenshot={png}", "--window-size=1280,1600", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return png, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_in_chromium_without_console_errors(comparison, tmp_path):
    import matplotlib.image

    page = tmp_path / "report.html"
    page.write_text(render_html(comparison), encoding="utf-8")
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><html><body><p>control</p>"
                       "<script>throw new Error('control page error 4711')</script></body></html>")
    _, control_console = render_in_chromium(control, tmp_path)
    assert any("control page error 4711" in line for line in control_console)  # the check can fail

    png, console = render_in_chromium(page, tmp_path)
    assert console == []
    assert png.stat().st_size > 20_000
    pixels = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(np.uint8)
    assert pixels.shape[:2] == (1600, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, code colours, charts: not a blank page
    tuned_blue = np.all(np.abs(pixels.astype(int) - (0x1F, 0x77, 0xB4)) <= 2, axis=-1)
    assert tuned_blue.sum() > 500  # the charts' tuned bars were drawn


def test_compare_computes_and_report_writes_with_no_import_cycle():
    """compare.py never imports report.py (not even inside a function); report.py imports compare."""
    import tutorforge.compare
    import tutorforge.report
    from conftest import tutorforge_imports

    assert "tutorforge.report" not in tutorforge_imports("compare")
    assert "tutorforge.compare" in tutorforge_imports("report")
    assert not hasattr(tutorforge.compare, "write_outputs") and hasattr(tutorforge.report, "write_outputs")


def test_a_follow_up_question_is_shown_after_its_earlier_turns(comparison):
    import dataclasses

    history = [{"role": "system", "content": "Be <terse>."}, {"role": "user", "content": "What is a list?"},
               {"role": "assistant", "content": "An ordered sequence. " + "x" * 400}]
    follow_up = {**_record(2, "A tuple is immutable.", "Immutable.", "Immutable, ordered."), "history": history,
                 "instruction": "And a tuple?"}
    c = dataclasses.replace(comparison, records=[*comparison.records, follow_up])
    html = render_html(c)
    section = html[html.index('<section class="prompt"><div class="history">'):]
    assert section.index("What is a list?") < section.index("An ordered sequence.") < section.index("And a tuple?")
    assert "Be &lt;terse&gt;." in section and "<terse>" not in html  # escaped like all text
    assert "x" * 218 + "…" in section and "x" * 219 not in section  # cut to HISTORY_CHARS (240) in all
    assert html.count('class="history"') == 1 and parse(html).tags.count("section") == 3
    md = render_markdown(c)
    assert "| 3 | [after 3 turns] And a tuple? |" in md
    lines = md[md.index("## Follow-up questions in their conversations"):].splitlines()
    assert lines[2:7] == ["- prompt 3:", "  - system: Be &lt;terse>.", "  - user: What is a list?",
                          f"  - assistant: An ordered sequence. {'x' * 98}…", "  - **user (asked)**: And a tuple?"]
