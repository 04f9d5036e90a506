"""A training output_dir as one typed object: its validated Config and the paths of what is in it.

    from tutorforge.rundir import RunDir
    run = RunDir.open(Path("outputs/python-tutor"))       # a finished training run, or UserError
    run.cfg.tutorforge.ollama.quantization, run.adapter, run.gguf(), run.modelfile
    model_dir, adapter = run.tuned()      # model/ and None for a full fine-tune; base and adapter/ for LoRA

Training writes run.json (`write_training`): its status, fingerprint and the frozen Config it trained
with, as a dict. `RunDir.open` rebuilds that Config (`config_from_dict`: the dataclasses of
tutorforge.config, their defaults filling keys an older run.json lacks), so every command after
training reads the same typed settings the run had, with the defaults written once, in config.py.
`run.stages` / `save_stages` are the pipeline's records of the stages after training (see
tutorforge.pipeline). No other module reads run.json.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tutorforge.config import Config
from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write
from tutorforge.rules import Invalid, OutputDir, StrMap

RUN_JSON = "run.json"


def gguf_file(directory: Path, name: str, kind: str) -> Path:
    """Where the GGUF of this name and type goes: NAME.KIND.gguf (model.Q4_K_M.gguf)."""
    return directory / f"{name}.{kind.upper()}.gguf"


def read_run_json(path: Path) -> dict | None:
    """The run.json in `path` as written, or None when there is none (or it cannot be read)."""
    try:
        info = json.loads((path / RUN_JSON).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def config_to_dict(cfg: Config) -> dict:
    """What run.json stores of a Config (tuples become lists in JSON; config_from_dict undoes it)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _value(rule: Any, value: Any) -> Any:
    """A stored JSON value passed through its key's rule again (lists become tuples; a value edited
    by hand into something the key does not accept is refused, as in the YAML)."""
    if isinstance(rule, StrMap) and isinstance(value, list):
        value = dict(value)  # stored as [[key, text], ...]
    if value is None or isinstance(rule, OutputDir):  # the run is where it was found
        return value
    return rule(value)


def _build(cls: type, data: dict, path: str) -> Any:
    if not isinstance(data, dict):
        raise Invalid(f"{path or 'config'}: expected a mapping")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # written before this key existed: its default
        value, meta, where = data[f.name], f.metadata, f"{path}.{f.name}".lstrip(".")
        if "section" in meta:
            kwargs[f.name] = _build(meta["section"], value or {}, where)
        elif "list_of" in meta:
            kwargs[f.name] = tuple(_build(meta["list_of"], v, f"{where}[{i}]") for i, v in enumerate(value or ()))
        else:
            try:
                kwargs[f.name] = _value(meta["rule"], value)
            except Invalid as exc:
                raise Invalid(f"{where}: {exc}") from None
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """The Config that config_to_dict stored (keys this version does not know are left out)."""
    return _build(Config, data, "")


@dataclass(frozen=True)
class RunDir:
    """An output_dir and the Config of its run; the paths of every stage's output in it."""

    path: Path
    cfg: Config
    info: dict = dataclasses.field(default_factory=dict, compare=False)  # run.json as read

    @classmethod
    def for_config(cls, cfg: Config) -> RunDir:
        """The output_dir a config trains into (it may hold no run yet)."""
        return cls(Path(cfg.output_dir), cfg)

    @classmethod
    def find(cls, path: Path) -> RunDir | None:
        """The finished training run in `path`, or None when `path` is not one."""
        info = read_run_json(Path(path)) if Path(path).is_dir() else None
        if info is None or not isinstance(info.get("config"), dict):
            return None
        try:
            cfg = config_from_dict(info["config"])
        except (Invalid, TypeError) as exc:
            raise UserError(f"{Path(path) / RUN_JSON}: its config cannot be read ({exc}); train the run "
                            "again, or give the files themselves") from None
        return cls(Path(path), cfg, info)

    @classmethod
    def open(cls, path: Path, instead: str = "train first") -> RunDir:
        """The finished training run in `path`; UserError naming what to give `instead` otherwise."""
        run = cls.find(path)
        if run is None:
            raise UserError(f"{path}: no complete training run here ({RUN_JSON} missing); give a training "
                            f"output_dir, or {instead}")
        return run

    # --- what is in it ------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """A full fine-tune (config adapter unset): training wrote model/, there is nothing to merge."""
        return self.cfg.adapter is None

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def model(self) -> Path:
        """A full fine-tune's trained model: a whole Hugging Face checkpoint."""
        return self.path / "model"

    @property
    def trained(self) -> Path:
        """What training wrote: model/ (a full fine-tune) or adapter/ (LoRA, QLoRA)."""
        return self.model if self.full else self.adapter

    def tuned(self) -> tuple[Path, Path | None]:
        """The trained model as (model directory, adapter or None): model/ for a full fine-tune, else
        the base model and adapter/ (tutorforge.export.run_source uses merged/ instead where it was
        merged from these)."""
        if self.full:
            return self.model, None
        from tutorforge.models import resolve_base_model

        return resolve_base_model(self.cfg.base_model).path, self.adapter

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def gguf_dir(self) -> Path:
        return self.path / "gguf"

    @property
    def gguf_name(self) -> str:
        """The GGUF file name stem (tutorforge.export.name, default "model")."""
        return self.cfg.tutorforge.export.name or "model"

    def gguf(self, kind: str | None = None) -> Path:
        """The GGUF of this type (default: the one the Modelfile uses, tutorforge.ollama.quantization)."""
        return gguf_file(self.gguf_dir, self.gguf_name, kind or self.cfg.tutorforge.ollama.quantization)

    @property
    def modelfile(self) -> Path:
        return self.gguf_dir / "Modelfile"

    @property
    def heldout(self) -> Path:
        """The held-out split training wrote (val_set_size); may not exist."""
        return self.path / "heldout.jsonl"

    @property
    def compare_dir(self) -> Path:
        return self.path / "compare"

    @property
    def model_name(self) -> str:
        """The Ollama model name (tutorforge.ollama.model_name, default the directory's name)."""
        return self.cfg.tutorforge.ollama.model_name or self.path.name

    # --- run.json -----------------------------------------------------------------------------

    @property
    def stages(self) -> dict:
        """The pipeline's records of the stages after training."""
        return dict((read_run_json(self.path) or {}).get("stages", {}))

    def save_stages(self, stages: dict) -> None:
        save_stages(self.path, stages)

    def training(self) -> dict:
        """run.json as it is now: status, fingerprint and the rest that training recorded."""
        return read_run_json(self.path) or {}


def save_stages(path: Path, stages: dict) -> None:
    """Write the pipeline's stage records into the run.json in `path` (which training wrote), atomically."""
    info = read_run_json(path) or {}
    info["stages"] = stages
    _write(path, info)


def write_training(path: Path, cfg: Config, record: dict) -> None:
    """Training's run.json: its record (status, fingerprint, steps, ...) and the Config it ran with."""
    _write(path, {**record, "config": config_to_dict(cfg)})


def _write(path: Path, info: dict) -> None:
    with atomic_write(path / RUN_JSON) as fh:
        json.dump(info, fh, indent=1, default=str)
