"""The prompts a comparison asks, and its brevity target: a prompts file (Alpaca rows, or
conversations as training reads them) or the config's held-out split.

    rows, target = prompts_and_target(cfg, config_dir, settings=cfg.tutorforge.compare)
    rows = load_prompts(Path("my_prompts.jsonl"))      # Alpaca rows or {"messages": [...]} rows
    history(rows[0])                                   # the turns before a conversation's last user turn

A conversation is asked as `as_prompt` says: its last user turn is the instruction, the turns before
it (system turns included) its history, the first assistant turn after it the reference. The held-out
split is training's heldout.jsonl (prepare.write_rows), else recomputed as training makes it. The
brevity target is the p90 word count of the answers training learned from (`training_outputs`: the
datasets' answers that are not held out). compare.py runs the comparison.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tutorforge.errors import UserError

if TYPE_CHECKING:
    from tutorforge.config import CompareSettings, Config

log = logging.getLogger(__name__)


def target_words_from(outputs: list[str]) -> int:
    """The brevity target: the 90th percentile of the training answers' word counts (rounded up)."""
    counts = [len(o.split()) for o in outputs if o.strip()]
    if not counts:
        raise UserError("no training answers to set the brevity target from; set tutorforge.compare."
                        "target_words in the config (or pass --target-words)")
    if len(counts) == 1:
        return counts[0]
    return math.ceil(statistics.quantiles(counts, n=100, method="inclusive")[89])



def _asked(row) -> int | None:
    """The index of a conversation row's last user turn (None: it has none)."""
    return max((i for i, t in enumerate(row.turns) if t.role == "user"), default=None)


def history(row) -> list[dict]:
    """The turns before a conversation row's last user turn as {"role", "content"} messages (system
    turns included); [] for an Alpaca row."""
    return [{"role": t.role, "content": t.content} for t in row.turns[:_asked(row) or 0]]


def as_prompt(row):
    """A row as compare asks it: a conversation's last user turn is its instruction, the first
    assistant turn after it its output, the reference ("" when none); an Alpaca row as it is."""
    import dataclasses

    if not row.turns:
        return row
    asked = _asked(row)
    if asked is None:
        raise UserError(f"{row.source}: a conversation with no user turn; compare asks a conversation's last "
                        "user turn (the turns before it are its history, the assistant turn after it the reference)")
    reference = next((t.content for t in row.turns[asked + 1:] if t.role == "assistant"), "")
    return dataclasses.replace(row, instruction=row.turns[asked].content, input="", output=reference)


def conversations_hash(rows: list) -> str | None:
    """The hash of the rows' turns (what outputs.rows_hash leaves out); None when no row has any."""
    import hashlib

    if not any(r.turns for r in rows):
        return None
    turns = [[[t.role, t.content, t.train] for t in r.turns] for r in rows]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()



def _json_items(path: Path) -> list[tuple[int, Any]]:
    """(line, value) of every row of a .jsonl (or .json array) file of prompts."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such prompts file; give an Alpaca .jsonl (instruction, input, output) "
                        "or one of conversations (messages)") from None
    if Path(path).suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = [(i + 1, v) for i, v in enumerate(json.loads(text))]
        except ValueError as exc:
            raise UserError(f"{path}: not a JSON array of Alpaca objects ({exc})") from None
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((n, json.loads(line)))
                except ValueError as exc:  # a JSONDecodeError, or int()'s digit limit on a long number
                    detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    raise UserError(f"{path}:{n}: not JSON ({detail}); one Alpaca object per line") from None
    return items


# a prompt row's key holding its messages -> the dataset type whose keys it has (conversations.DEFAULTS)
MESSAGE_KEYS = {"messages": "chat_template", "conversations": "sharegpt"}
HELDOUT_TRAINING_KEY = "train"  # a held-out turn's own training flag, as prepare.write_rows writes it


def load_prompts(path: Path, *, held_out: bool = False) -> list:
    """Alpaca rows from a .jsonl (or .json array) file ("output", the reference, is optional), or
    conversations: rows of {"messages": [{"role", "content"}, ...]} or ShareGPT's {"conversations":
    [{"from", "value"}, ...]}, read as training reads them (`as_prompt` says what is asked). With
    held_out, a heldout.jsonl that training wrote: its turns' training flags, roles_to_train and
    train_on_eos are kept, so perplexity scores the turns training labels, and each row's "source"
    (its dataset file:line) names it."""
    from tutorforge.data import Row

    items = _json_items(path)
    keys = [next((k for k in MESSAGE_KEYS if k in value), None) if isinstance(value, dict) else None
            for _, value in items]
    chats = iter(_conversation_prompts(path, keys, held_out=held_out) if any(keys) else ())
    rows = []
    for (n, value), key in zip(items, keys, strict=True):
        if key is not None:  # a conversation (training's heldout.jsonl may mix them with Alpaca rows)
            rows.append(next(chats))
            continue
        instruction = value.get("instruction") if isinstance(value, dict) else None
        if not isinstance(instruction, str) or not instruction.strip():
            raise UserError(f"{path}:{n}: needs a non-empty \"instruction\" string (input and output are optional)")
        fields = [value.get(k) or "" for k in ("input", "output")]
        if not all(isinstance(f, str) for f in fields):
            raise UserError(f"{path}:{n}: \"input\" and \"output\" must be strings")
        rows.append(Row(value["instruction"], fields[0], fields[1], f"{path}:{n}"))
    if not rows:
        raise UserError(f"{path}: no prompts in the file")
    if held_out:  # each row named by the dataset line it came from, as training's write_rows wrote it
        import dataclasses

        rows = [dataclasses.replace(r, source=v["source"]) if isinstance(v.get("source"), str) else r
                for r, (_, v) in zip(rows, items, strict=True)]
    return rows


def _conversation_prompts(path: Path, keys: list[str | None], *, held_out: bool) -> list:
    """The conversations of a prompts file (the rows whose `keys` entry names their messages' key),
    in order, read by data.load_files with the default Reading of their type (conversations.py: its
    keys and role names), each as `as_prompt` asks it."""
    import dataclasses

    from tutorforge.config import DatasetSpec
    from tutorforge.conversations import DEFAULTS, TEMPLATE_ROLES, conversation_reading
    from tutorforge.data import Reject, Row, load_files

    key = next(k for k in keys if k is not None)
    if len(set(keys) - {None}) > 1:
        raise UserError(f"{path}: rows of messages and rows of conversations (ShareGPT) in one file; "
                        "give each format its own file")
    _, role, content = DEFAULTS[MESSAGE_KEYS[key]]
    spec = DatasetSpec(path=str(path), type="chat_template", field_messages=key,  # sharegpt's keys, unwarned
                       message_property_mappings=(("role", role), ("content", content)),
                       message_field_training=HELDOUT_TRAINING_KEY if held_out else None)
    default = conversation_reading(spec, 0)
    # read with every role trainable: a prompt that ends with its user turn (no reference) is asked,
    # not rejected as a row with nothing to train on; the rows then get the default roles back
    report = load_files([path], readings=[dataclasses.replace(default, roles_to_train=tuple(sorted(TEMPLATE_ROLES)))])
    if report.file_rejects:
        raise UserError(report.file_rejects[0].render())
    # one Row or Reject per row read, in the file's order; the Alpaca rows' rejects are not ours
    read = sorted(report.rows + report.row_rejects, key=lambda r: int(r.source.rpartition(":")[2]))
    if bad := [r for r, k in zip(read, keys, strict=True) if k is not None and isinstance(r, Reject)]:
        raise UserError(f"{path}: {len(bad)} row(s) are no conversation to ask: "
                        + "; ".join(r.render() for r in bad[:5]))
    rows = []
    for row in (r for r, k in zip(read, keys, strict=True) if k is not None):
        assert isinstance(row, Row)
        saved = json.loads(row.raw) if held_out else {}
        rows.append(as_prompt(dataclasses.replace(
            row, roles_to_train=tuple(saved.get("roles_to_train", default.roles_to_train)),
            train_on_eos=saved.get("train_on_eos", default.train_on_eos))))
    return rows


def heldout_rows(cfg: Config, config_dir: Path | None = None) -> list:
    """The config's held-out split: output_dir/heldout.jsonl (training writes it), else the split
    recomputed exactly as training makes it (prepare.prepare: same filtering, same seed)."""
    from tutorforge.rundir import RunDir

    heldout = RunDir.for_config(cfg).heldout
    if not cfg.val_set_size:  # training then writes an empty heldout.jsonl
        raise UserError("val_set_size is 0, so the config holds no rows out to compare on; set "
                        "tutorforge.compare.prompts (or pass --prompts) to a JSONL of prompts, or set "
                        "val_set_size (e.g. 0.1) and train again")
    if heldout.is_file():
        return load_prompts(heldout, held_out=True)
    from tutorforge.models import resolve_base_model
    from tutorforge.prepare import prepare, write_rows
    from tutorforge.tokenizer import tokenizer_for

    log.info("%s absent: the held-out split is recomputed from the datasets (val_set_size %g, seed %d)",
             heldout, cfg.val_set_size, cfg.seed)
    tokenizer = tokenizer_for(resolve_base_model(cfg.base_model).path, cfg.tokenizer_config,  # as training does
                              special_tokens=cfg.special_tokens, trust_remote_code=cfg.trust_remote_code)
    held = prepare(cfg, tokenizer, skip_bad_rows=cfg.tutorforge.skip_bad_rows, config_dir=config_dir).val_rows
    with tempfile.TemporaryDirectory() as tmp:  # read back as training's heldout.jsonl would be
        write_rows(held, Path(tmp) / "heldout.jsonl")
        return load_prompts(Path(tmp) / "heldout.jsonl", held_out=True)


def training_outputs(cfg: Config, held: list, config_dir: Path | None = None) -> list[str]:
    """The answers of the config's datasets that are not held out (what training learned from)."""
    from collections import Counter

    from tutorforge.data import load_datasets

    def identity(r) -> tuple:  # a conversation by its turns: compare asks its last user turn (as_prompt)
        return r.turns or (r.instruction, r.input, r.output)

    held_out = Counter(identity(r) for r in held)  # one training row per held row:
    answers = []  # conversations may share their last turns ("And with the index?") with other rows
    for r in load_datasets(cfg.datasets, config_dir).rows:
        key = identity(r)
        if held_out[key]:
            held_out[key] -= 1
        else:
            answers.append(r.output)
    return answers


def prompts_and_target(cfg: Config | None, config_dir: Path | None, *, settings: CompareSettings,
                       prompts: Path | None = None,
                       target_words: int | None = None, max_prompts: int | None = None) -> tuple[list, int]:
    """The rows to ask (prompts, else tutorforge.compare.prompts, else the config's held-out split; at
    most max_prompts) and the brevity target (target_words, else tutorforge.compare.target_words,
    else p90 of the training answers; without a config, p90 of the prompts' references)."""
    from tutorforge.rundir import RunDir

    prompts = prompts or (Path(settings.prompts) if settings.prompts else None)
    if prompts is None and cfg is None:
        raise UserError("compare without a config needs --prompts FILE.jsonl (Alpaca rows, or conversations)")
    target = target_words or settings.target_words
    held = []  # the held-out split: what is asked, else what the brevity target leaves out
    if cfg is not None and (prompts is None or (not target and cfg.val_set_size
                                                and RunDir.for_config(cfg).heldout.is_file())):
        held = heldout_rows(cfg, config_dir)
    rows = load_prompts(prompts) if prompts else held
    if not target:
        target = target_words_from(training_outputs(cfg, held, config_dir) if cfg else [r.output for r in rows])
        log.info("brevity target: %d words (p90 of %s)", target, "the training answers" if cfg else
                 f"the references in {prompts}; give --target-words or a config to use the training answers")
    return rows[: max_prompts or settings.max_prompts or None], target
