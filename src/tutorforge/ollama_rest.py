"""Deploy a packaged model to an Ollama server through its REST API (no `ollama` CLI needed).

    deploy_rest(ollama_host(), "python-tutor", Path("outputs/run/gguf/Modelfile"))

The GGUF goes up as a blob (HEAD, then POST /api/blobs/sha256:<digest>) and the model is created
from the Modelfile's fields (POST /api/create), as Ollama's API documentation describes.
`ollama_host` reads OLLAMA_HOST as Ollama's CLI does (default 127.0.0.1:11434); `server_answers`
says whether a server is there. `tutorforge deploy` prefers the `ollama` CLI when it is installed.
"""
from __future__ import annotations

import json
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import sha256_file
from tutorforge.ollama import parse_modelfile


def create_request(name: str, parsed: dict, gguf_name: str, digest: str) -> dict:
    """The body of Ollama's POST /api/create for a Modelfile written by `modelfile`."""
    parameters: dict[str, object] = {}
    stops: list[str] = []  # parameters["stop"], placed where the first stop line is
    for key, value in parsed["PARAMETER"]:
        if key == "stop":
            parameters["stop"] = stops
            stops.append(value.strip('"'))
        else:
            parameters[key] = float(value) if "." in value or key == "temperature" else int(value)
    body = {"model": name, "files": {gguf_name: f"sha256:{digest}"}, "template": parsed["TEMPLATE"],
            "parameters": parameters, "stream": True}
    if parsed.get("SYSTEM"):
        body["system"] = parsed["SYSTEM"]
    if parsed.get("LICENSE"):
        body["license"] = parsed["LICENSE"]
    return body


def deploy_rest(host: str, name: str, modelfile_path: Path, *, say=print, timeout: float = 600) -> None:
    """Upload the GGUF as a blob (HEAD, then POST /api/blobs/sha256:<digest>) and create the model
    (POST /api/create), as Ollama's REST API documents; progress lines go to `say`."""
    import urllib.error
    import urllib.request

    parsed = parse_modelfile(modelfile_path.read_text())
    gguf = modelfile_path.parent / str(parsed["FROM"]).removeprefix("./")
    say(f"hashing {gguf.name} ...")
    digest = sha256_file(gguf)
    blob = f"{host}/api/blobs/sha256:{digest}"
    try:
        urllib.request.urlopen(urllib.request.Request(blob, method="HEAD"), timeout=30)
        say("blob already on the server")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise UserError(f"{host}: HEAD /api/blobs answered {exc.code}") from None
        say(f"uploading {gguf.stat().st_size / 2**20:.1f} MiB ...")
        with gguf.open("rb") as fh:
            request = urllib.request.Request(blob, data=fh, method="POST",
                                             headers={"Content-Length": str(gguf.stat().st_size)})
            urllib.request.urlopen(request, timeout=timeout)
    body = json.dumps(create_request(name, parsed, gguf.name, digest)).encode()
    request = urllib.request.Request(f"{host}/api/create", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for line in response:
            status = json.loads(line or b"{}")
            if "error" in status:
                raise UserError(f"ollama create {name}: {status['error']}")
            say(status.get("status", ""))


def ollama_host() -> str:
    import os

    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    return host if host.startswith("http") else f"http://{host}"


def server_answers(host: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(f"{host}/api/version", timeout=2)
        return True
    except OSError:
        return False
