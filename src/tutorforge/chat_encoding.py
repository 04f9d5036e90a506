"""Tokenise a rendered chat template: the template's control tokens apart from message content, and
which tokens are which message's content (the per-turn loss masks of conversations).

    pieces = render_turns(render, messages)           # [(text, message index or None), ...]
    turns = encode_turns(tokenizer, pieces)           # ids, and the message whose content each token is
    mask = turns.mask(trained, end_token_id, "turn")  # per token: is it trained? (train_on_eos: turn)
    ids = encode_segments(render_segments(render, messages), markers, encode)  # any tokenizer: ids only

A message's content is tokenised as text (a special token typed in it is not a turn marker); the
template's markers are control tokens. The text between two markers (template text and content
joined) is tokenised in one piece, as the whole rendered conversation is at inference, so a token may
straddle a content edge (" hi" after "[INST]"): it counts as content, as Axolotl's turn finder
(prompt_strategies/chat_template.py, find_turn: the token span that differs when the content does)
counts it. The end-of-turn token of a message is the first `end_token_id` among the template tokens
that follow its content, before the next message's content (Axolotl looks up to 3 tokens further).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tutorforge.errors import UserError

_HOLE = re.compile("\ue000(\\d+)\ue001")  # a placeholder for message i (private-use characters)
TRAIN_ON_EOS = ("turn", "last", "all", "none")  # Axolotl's train_on_eos values


def render_turns(render: Callable[[list[dict]], str], messages: list[dict]) -> list[tuple[str, int | None]]:
    """`render(messages)` cut into (text, message index) pieces: the template's own text (index
    None), and each message's content as the template placed it (trimmed or not). Found by
    rendering with a placeholder for every content, then with one real content at a time, so it
    works for any template that places content without looking inside it; the pieces always join
    to `render(messages)` (checked)."""
    holes = [dict(m, content=f"\ue000{i}\ue001") for i, m in enumerate(messages)]
    skeleton = render(holes)
    pieces: list[tuple[str, int | None]] = []
    at = 0
    for match in _HOLE.finditer(skeleton):
        i = int(match.group(1))
        if skeleton.count(match.group(0)) != 1:
            raise UserError("the chat template writes a message's content twice; tutorforge cannot tell "
                            "its content from its control tokens (please report this template)")
        one = render([messages[j] if j == i else h for j, h in enumerate(holes)])
        tail = len(skeleton) - match.end()
        pieces += [(skeleton[at:match.start()], None), (one[match.start():len(one) - tail], i)]
        at = match.end()
    pieces.append((skeleton[at:], None))
    pieces = [(text, i) for text, i in pieces if text]
    if "".join(text for text, _ in pieces) != render(messages):
        raise UserError("the chat template renders a message differently depending on its content; "
                        "tutorforge cannot tell its content from its control tokens (please report it)")
    return pieces


def render_segments(render: Callable[[list[dict]], str], messages: list[dict]) -> list[tuple[str, bool]]:
    """`render_turns` as (text, is_content) pieces."""
    return [(text, i is not None) for text, i in render_turns(render, messages)]


def _runs(pieces: Iterable[tuple[str, bool]], markers: Iterable[str]) -> list[tuple[str, bool]]:
    """The rendered text as (text, is_marker) runs: a marker (control-token string) where the
    template's own text has one, and everything between two markers joined into one text run."""
    markers = sorted(set(markers), key=len, reverse=True)  # the longest match first, as tokenizers do
    split = re.compile("(" + "|".join(map(re.escape, markers)) + ")") if markers else None
    runs: list[tuple[str, bool]] = []
    text = ""
    for piece, is_content in pieces:
        parts = [piece] if is_content or split is None else split.split(piece)
        for k, part in enumerate(parts):
            if k % 2 == 0:
                text += part
                continue
            if text:
                runs.append((text, False))
            runs.append((part, True))
            text = ""
    if text:
        runs.append((text, False))
    return runs


def encode_segments(pieces: list[tuple[str, bool]], markers: Iterable[str],
                    encode: Callable[[str, bool], list[int]]) -> list[int]:
    """Token ids of rendered (text, is_content) pieces. `markers` (the tokenizer's control-token
    strings) are control tokens only where the template's own text has them, `encode(marker, True)`;
    everything between two markers (template text and content, joined) is `encode(text, False)`,
    plain text. Tokenizers cut the text at control tokens before anything else, so for content
    without markers the ids equal those of the whole text tokenized with special parsing."""
    return [t for run, is_marker in _runs(pieces, markers) for t in encode(run, is_marker)]


def control_tokens(tokenizer) -> list[str]:
    """The strings a Hugging Face tokenizer reads as special tokens."""
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]


@dataclass(frozen=True)
class TurnTokens:
    """A rendered conversation's token ids, with each token's message (the one whose content it is
    part of, or None for the template's own tokens)."""

    ids: list[int]
    owner: list[int | None]

    def mask(self, trained: Sequence[bool], end_token_id: int, train_on_eos: str) -> list[bool]:
        """Per token, trained or not: the content of every trained message, and end-of-turn tokens by
        Axolotl's train_on_eos: "turn" after each trained message, "last" after the last trained one,
        "all" after every message, "none" never."""
        if train_on_eos not in TRAIN_ON_EOS:
            raise ValueError(f"train_on_eos {train_on_eos!r}: not one of {', '.join(TRAIN_ON_EOS)}")
        out = [m is not None and trained[m] for m in self.owner]
        ends = {i: k for i in range(len(trained)) if (k := self._end_token(i, end_token_id)) is not None}
        chosen = {"turn": [i for i in ends if trained[i]], "all": list(ends), "none": [],
                  "last": [i for i in ends if trained[i]][-1:]}[train_on_eos]  # the last one found
        for i in chosen:
            out[ends[i]] = True
        return out

    def _end_token(self, message: int, end_token_id: int) -> int | None:
        """The first `end_token_id` after the message's content and before the next content."""
        last = max((k for k, m in enumerate(self.owner) if m == message), default=None)
        if last is None:
            return None
        for k in range(last + 1, len(self.ids)):
            if self.owner[k] is not None:
                return None
            if self.ids[k] == end_token_id:
                return k
        return None


def encode_turns(tokenizer, pieces: list[tuple[str, int | None]]) -> TurnTokens:
    """Token ids of `render_turns` pieces, exactly as `encode_segments` gives them for this Hugging
    Face tokenizer, with each token's message: the content it overlaps (by the tokenizer's offsets)."""
    spans, at = {}, 0  # message -> its content's (start, end) in the rendered text
    for text, i in pieces:
        if i is not None:
            spans[i] = (at, at + len(text))
        at += len(text)
    ids: list[int] = []
    owner: list[int | None] = []
    at = 0
    for run, is_marker in _runs([(text, i is not None) for text, i in pieces], control_tokens(tokenizer)):
        enc = tokenizer(run, add_special_tokens=False, split_special_tokens=not is_marker,
                        return_offsets_mapping=True)
        for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            start, end = at + start, at + max(end, start + 1)
            ids.append(token)
            owner.append(None if is_marker else next(
                (i for i, (a, b) in spans.items() if start < b and end > a), None))
        at += len(run)
    return TurnTokens(ids, owner)
