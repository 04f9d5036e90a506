"""The generation metric an evaluation can choose the checkpoint by (`metric_for_best_model:
code_runs`): the share of a few held-out prompts whose greedy answer has Python code that runs.

    metric_for_best_model: code_runs      # instead of eval_loss
    load_best_model_at_end: true          # the run's output is the best evaluated checkpoint
    eval_max_new_tokens: 256              # answer length
    tutorforge: {eval_prompts: 8}         # the first 8 held-out prompts, at every evaluation

The held-out loss measures how well the model predicts the reference answers; a tutor is judged on
what it writes. At each evaluation the model in training answers the first `tutorforge.eval_prompts`
rows of heldout.jsonl greedily (prompted exactly as in training and in `compare`), and every answer
is scored as `compare` scores it (its ```python blocks run in the sandbox). An answer without code,
or whose code fails, counts against the share: a checkpoint cannot win by dropping the code.
"""
from __future__ import annotations

import logging

from tutorforge.config import BEST_METRICS, Config
from tutorforge.errors import UserError

log = logging.getLogger(__name__)


def greater_is_better(cfg: Config) -> bool:
    """The config's greater_is_better (validation has checked it agrees), else the metric's own."""
    if cfg.greater_is_better is not None:
        return cfg.greater_is_better
    return BEST_METRICS[cfg.metric_for_best_model]


def better(cfg: Config, value: float, best: float | None) -> bool:
    """True when `value` of the chosen metric improves on `best` (None: nothing yet)."""
    if best is None:
        return True
    return value > best if greater_is_better(cfg) else value < best


def prompts_for(cfg: Config) -> list:
    """The held-out rows every evaluation answers (the first tutorforge.eval_prompts of heldout.jsonl)."""
    from tutorforge import sandbox
    from tutorforge.prompts import load_prompts
    from tutorforge.rundir import RunDir

    sandbox.require_sandbox()  # model-written code runs there: no sandbox, no code_runs metric
    heldout = RunDir.for_config(cfg).heldout
    if not heldout.is_file():
        raise UserError(f"metric_for_best_model: code_runs: {heldout} is missing; it needs held-out rows "
                        "(val_set_size > 0)")
    rows = load_prompts(heldout, held_out=True)[: cfg.tutorforge.eval_prompts]
    if not rows:
        raise UserError(f"metric_for_best_model: code_runs: {heldout} holds no prompt to answer")
    return rows


def code_runs(model, tokenizer, cfg: Config, rows: list) -> float:
    """Percent of `rows` whose greedy answer (eval_max_new_tokens at most) has code and all of it
    runs in the sandbox, answered by `model` as it is now (in eval mode; the caller restores train)."""
    from tutorforge.compare import score_answer
    from tutorforge.evaluate import TorchGenerator
    from tutorforge.prompts import history

    model.eval()
    gen = TorchGenerator.wrapping(model, tokenizer, chat_template=cfg.chat_template,
                                  system=cfg.default_system_message)
    ran = 0
    for row in rows:
        answer = gen.generate(row.instruction, row.input, max_new_tokens=cfg.eval_max_new_tokens,
                              history=history(row))
        ran += bool(score_answer(answer, None, target_words=10**9)["code_runs"])
    return 100.0 * ran / len(rows)
