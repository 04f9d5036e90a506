"""cli.py: the command table, --help, exit codes, and messages without tracebacks."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MISSION_CONFIG, ROOT
from tutorforge import cli
from tutorforge.errors import UserError


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tutorforge", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name.split()[0] in out.stdout


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*name.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert (cli.COMMANDS[name].__doc__ or "").split("\n")[0].strip()[:30] in " ".join(text.split())


def test_generate_help_describes_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "--prompt" in text and "--max-new-tokens" in text and "longest answer in tokens" in text


def test_validate_mission_config(write_config):
    out = run("validate", str(write_config(MISSION_CONFIG)))
    assert out.returncode == 0, out.stderr
    assert "valid: qlora r=32 on NousResearch/Meta-Llama-3-8B" in out.stdout
    assert "set base_model to its path" in out.stdout  # offline: the note says what to do


def test_invalid_config_exits_2_with_every_problem(write_config):
    path = write_config("base_model: x/y\nadapter: lora\nlora_r: 0\nmicro_batch_size: -1\n")
    out = run("validate", str(path))
    assert out.returncode == 2
    assert f"{path}:3: lora_r: 0: must be >= 1" in out.stdout
    assert f"{path}:4: micro_batch_size: -1: must be >= 1" in out.stdout
    assert "2 problems" in out.stderr and "Traceback" not in out.stdout + out.stderr


def test_user_mistakes_exit_2_without_traceback(write_config, tmp_path):
    missing = run("validate", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    offline = run("generate", str(write_config(MISSION_CONFIG)), "--prompt", "hi",
                  env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert offline.returncode == 2
    assert "NousResearch/Meta-Llama-3-8B is not on this machine" in offline.stderr
    assert "Traceback" not in offline.stderr
    debug = run("--debug", "validate", str(tmp_path / "nope.yml"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    usage = run("generate", "smollm2")  # --prompt missing
    assert usage.returncode == 2 and "--prompt" in usage.stderr


def test_internal_error_is_labelled(monkeypatch, capsys):
    def broken(config):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "validate", broken)
    assert cli.main(["validate", "x.yml"]) == 1
    assert "internal error: RuntimeError: boom" in capsys.readouterr().err


def test_user_error_exit_code(monkeypatch, capsys):
    def mistake(config):
        raise UserError("x.yml: bad")

    monkeypatch.setitem(cli.COMMANDS, "validate", mistake)
    assert cli.main(["validate", "x.yml"]) == 2
    assert capsys.readouterr().err.strip() == "error: x.yml: bad"


def test_keys_lists_the_reference(capsys):
    assert cli.main(["keys"]) == 0
    text = capsys.readouterr().out
    assert "lora_r" in text and "tutorforge.export.quantizations" in text


def test_the_readme_documents_every_supported_key(capsys):
    from conftest import ROOT
    from tutorforge.config import reference

    assert cli.main(["keys", "--markdown"]) == 0
    table = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, *_ in reference() if f"| `{name}` |" not in readme]
    assert not missing, f"README's configuration reference lacks {missing}; paste `tutorforge keys --markdown`"
    assert table.strip() in readme, "README's key table differs from `tutorforge keys --markdown`"
    assert cli.main(["keys", "--axolotl", "--markdown"]) == 0
    axolotl = capsys.readouterr().out
    assert axolotl.count("\n| `") > 400 and "| `deepspeed` | refused | DeepSpeed" in axolotl
    for part in axolotl.strip().split("\n\n"):  # the counts, then the table
        assert part in readme, "README's Axolotl key list differs from `tutorforge keys --axolotl --markdown`"


def test_keys_says_what_tutorforge_does_with_each_axolotl_key(capsys):
    assert cli.main(["keys", "--axolotl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["liger_rms_norm", "ignored:speed"] for line in lines)
    assert any(line.split()[:2] == ["rl", "refused"] for line in lines)
    assert not any(line.split()[1] == "implemented" for line in lines)  # those are in `tutorforge keys`


@pytest.mark.slow
def test_validate_and_generate_on_the_shipped_recipe(bundled):
    """Validate the shipped recipe, then a greedy answer from the bundled model, twice the same."""
    recipe = "recipes/python-tutor-smollm2-cpu.yml"
    assert run("validate", recipe).returncode == 0
    first = run("generate", recipe, "--prompt", "How do I reverse a list in Python?",
                "--max-new-tokens", "48")
    assert first.returncode == 0, first.stderr
    assert "revers" in first.stdout.lower()
    second = run("generate", recipe, "--prompt", "How do I reverse a list in Python?",
                 "--max-new-tokens", "48")
    assert second.stdout == first.stdout  # temperature 0: the same answer every time


@pytest.mark.slow
def test_data_prepare_with_and_without_skip_bad_rows(tmp_path, write_config, capsys, bundled):
    import json

    data = tmp_path / "d.jsonl"
    good = [{"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"instruction": "x"}\n{oops\n')
    config = write_config(f"base_model: smollm2\nadapter: lora\nsequence_len: 256\nsample_packing: true\n"
                          f"val_set_size: 0.1\ndatasets:\n  - path: {data}\noutput_dir: {tmp_path / 'out'}\n")
    assert cli.main(["data", "prepare", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:21: missing 'output'" in err and f"{data}:22: malformed JSON" in err
    assert "2 unusable of 22 rows read" in err
    assert cli.main(["data", "prepare", str(config), "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert "22 rows read from 1 file(s): 20 accepted, 2 rejected" in out
    assert "split: 18 train, 2 held out" in out and "packed" in out
    rejected = (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()
    assert [json.loads(r)["raw"] for r in rejected] == ['{"instruction": "x"}', "{oops"]
    assert len((tmp_path / "out" / "heldout.jsonl").read_text().splitlines()) == 2


def test_merge_and_export_explain_what_they_need(tmp_path, capsys):
    assert cli.main(["merge", str(tmp_path)]) == 2
    assert "no complete training run here (run.json missing)" in capsys.readouterr().err
    assert cli.main(["merge", "--base", "smollm2"]) == 2
    assert "merge needs a training output_dir, or all of --base, --adapter and --out" in capsys.readouterr().err
    assert cli.main(["export", "--base", "smollm2"]) == 2
    assert "export needs a training output_dir" in capsys.readouterr().err


def test_every_command_that_writes_an_output_dir_waits_for_none_and_names_the_holder(tmp_path, capsys):
    """While one command works on an output_dir, every other that would write there is refused at
    once, with the holder named: run, train, data prepare, merge, export, package, compare."""
    import json
    import os
    import signal

    base = tmp_path / "base"  # enough of a model for the commands to reach their lock
    base.mkdir()
    (base / "config.json").write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, base / "model.safetensors")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"instruction": "a", "input": "", "output": "b"}) + "\n")
    run_dir = tmp_path / "run"
    config = tmp_path / "c.yml"
    config.write_text(f"base_model: {base}\nadapter: lora\ndatasets:\n  - path: {data}\noutput_dir: {run_dir}\n"
                      "tutorforge: {compare: {target_words: 10}}\n")
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": {"base_model": str(base), "adapter": "lora"}}))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom tutorforge import fsutil\nfsutil.HOLDER = 'tutorforge export'\n"
         f"with fsutil.exclusive({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["run", str(config)], ["train", str(config)], ["data", "prepare", str(config)],
                     ["merge", str(run_dir)], ["export", str(run_dir)], ["package", str(run_dir)],
                     ["compare", str(config)]):
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"tutorforge export (pid {holder.pid}, since" in err and "is already working on" in err, (argv, err)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "run.json"]  # nothing was written


def test_cli_modules_import_one_way_stay_small_and_load_nothing_heavy_at_startup():
    """cli -> cli_train, cli_model -> cli_locks, cli_terminal, never back (not even inside a function);
    every module under 450 lines; at module level the command modules import only the standard
    library and these helpers, so `tutorforge --help` loads no torch, transformers or config."""
    from pathlib import Path

    from conftest import tutorforge_imports

    src = ROOT / "src" / "tutorforge"

    def imports(name: str, top_only: bool = False) -> set[str]:
        return {m.removeprefix("tutorforge.") for m in tutorforge_imports(name, top_only=top_only)}

    cli_modules = {p.stem for p in src.glob("cli*.py")}
    assert cli_modules == {"cli", "cli_train", "cli_model", "cli_locks", "cli_terminal"}
    assert imports("cli", top_only=True) >= {"cli_train", "cli_model"}
    for commands in ("cli_train", "cli_model"):
        assert imports(commands) & cli_modules == {"cli_locks", "cli_terminal"}, commands
        assert imports(commands, top_only=True) == {"cli_locks", "cli_terminal", "errors"}, commands
    for helper in ("cli_locks", "cli_terminal"):
        assert not imports(helper) & cli_modules, helper
    sizes = {name: len((src / f"{name}.py").read_text().splitlines()) for name in cli_modules}
    assert max(sizes.values()) < 450, sizes
    assert all(c.__module__ in {"tutorforge.cli_train", "tutorforge.cli_model"} for c in cli.COMMANDS.values())
    assert Path(cli.__file__).stem == "cli" and callable(cli.main)  # the console entry point tutorforge.cli:main


def test_run_prints_its_stages_as_a_table():
    from pathlib import Path

    from tutorforge.cli_terminal import render_stages
    from tutorforge.pipeline import Outcome

    table = render_stages([Outcome("validate", "done", 0.4),
                           Outcome("train", "done", 61.6, Path("runs/x/adapter"), 3 * 2**20 + 2**19),
                           Outcome("export", "skipped", 2.0, Path("runs/x/gguf/model.gguf"), 3 * 2**30),
                           Outcome("package", "done", 0.0, Path("runs/x/gguf/Modelfile"), 1536)])
    assert table.splitlines() == [  # sizes: 3.5 MiB, 3 GiB, 1536 bytes rounds to 2 KiB
        "stage              time  output                      size",
        "validate  done     0 s                                   ",
        "train     done     62 s  runs/x/adapter           3.5 MiB",
        "export    skipped  2 s   runs/x/gguf/model.gguf  3.00 GiB",
        "package   done     0 s   runs/x/gguf/Modelfile      2 KiB",
    ]
