"""Render an Ollama TEMPLATE with Go's own text/template, the engine Ollama renders it with.

    render = go_renderer()          # None when Go is not installed (apt-get install golang-go)
    text = render(template, {"messages": [{"role": "user", "content": "Hi"}], "System": ""})

The renderer is gotemplate/main.go (beside this module), built once with the machine's `go` into
tutorforge's cache (keyed by the source's hash) and run once per rendering: JSON in
({"template", "data"}), the rendered text out. ollama.verify_template uses it to prove that a
Modelfile's TEMPLATE gives the training prompt.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tutorforge.errors import UserError


def go_renderer() -> Callable[[str, dict], str] | None:
    """A function rendering (TEMPLATE, data) with Go's text/template, built once from
    gotemplate/main.go and cached; None when Go is not installed."""
    import hashlib
    import os
    import shutil
    import subprocess

    from tutorforge.models import cache_root

    go = shutil.which("go")
    if go is None:
        return None
    source = Path(__file__).with_name("gotemplate") / "main.go"
    binary = cache_root() / "go" / f"render-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}"
    if not binary.is_file():
        work = binary.parent / f".build-{os.getpid()}"
        env = {"HOME": str(work), "GOCACHE": str(work / "cache"), "GOPATH": str(work / "gopath"),
               "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GO111MODULE": "off"}
        work.mkdir(parents=True, exist_ok=True)
        try:
            built = subprocess.run([go, "build", "-o", str(work / "render"), str(source)], env=env,
                                   capture_output=True, text=True)
            if built.returncode != 0:
                raise UserError(f"go build {source}: {built.stderr.strip()[-300:]}")
            (work / "render").replace(binary)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def render(template: str, data: dict) -> str:
        data = dict(data)
        data["Messages"] = [{"Role": m["role"], "Content": m["content"]} for m in data.pop("messages", [])]
        out = subprocess.run([str(binary)], input=json.dumps({"template": template, "data": data}).encode(),
                             capture_output=True)
        if out.returncode != 0:
            raise UserError(f"the Ollama TEMPLATE does not render in Go: {out.stderr.decode()[-300:]}")
        return out.stdout.decode()

    return render
