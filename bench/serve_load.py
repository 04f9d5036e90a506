"""Load test of `tutorforge serve`: N concurrent clients for S seconds on 127.0.0.1, every answer
checked against the answer the same question gets alone, latency p50/p99 against that baseline.

    GGUF=$(.venv/bin/python -c 'from tutorforge.models import bundled_gguf; print(bundled_gguf())')
    .venv/bin/python bench/serve_load.py "$GGUF"                     # 20 clients, 60 s
    .venv/bin/python bench/serve_load.py outputs/python-tutor-smollm2 --clients 20 --seconds 60

MODEL is what `tutorforge serve` takes (a .gguf file or a training output_dir). Half the clients
stream (server-sent events), half do not; answers are greedy (temperature 0), so each must equal
its question's baseline exactly. The server must still answer afterwards. Exit status 1 when any
request failed or was wrong.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

QUESTIONS = ["What is a tuple?", "How do I reverse a list in Python?", "What does len() do?",
             "Name one Python web framework.", "What is a dictionary?", "How do I read a file?",
             "What is a for loop?", "What does `import` do?"]


def start_server(model: str) -> tuple[subprocess.Popen, int, deque]:
    proc = subprocess.Popen([sys.executable, "-m", "tutorforge", "serve", model, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    tail: deque = deque(maxlen=50)
    for line in proc.stdout:
        tail.append(line)
        if match := re.search(r"serving on http://127.0.0.1:(\d+)/v1", line):
            threading.Thread(target=lambda: tail.extend(proc.stdout), daemon=True).start()
            return proc, int(match.group(1)), tail
    sys.exit("the server did not start:\n" + "".join(tail))


def ask(port: int, question: str, max_tokens: int, stream: bool) -> tuple[str, str | None]:
    """(answer, finish_reason) of one request; raises on any HTTP or protocol error."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": stream})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]}")
    finally:
        conn.close()
    if not stream:
        choice = json.loads(data)["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    events = [e.removeprefix("data: ") for e in data.split("\n\n") if e]
    if events[-1] != "[DONE]":
        raise RuntimeError(f"the event stream did not end with [DONE]: {events[-1][:100]}")
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    return "".join(c["delta"].get("content") or "" for c in chunks), chunks[-1]["finish_reason"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def baseline(port: int, max_tokens: int) -> tuple[dict[str, tuple[str, str]], list[float]]:
    """Each question alone, streamed and not (they must agree): the references and latencies."""
    references, latencies = {}, []
    for question in QUESTIONS:
        for stream in (False, True):
            start = time.monotonic()
            answer = ask(port, question, max_tokens, stream)
            latencies.append(time.monotonic() - start)
            if references.setdefault(question, answer) != answer:
                sys.exit(f"{question!r}: the streamed answer differs from the plain one:\n"
                         f"{references[question]}\n{answer}")
    return references, latencies


def load(port: int, clients: int, seconds: float, max_tokens: int,
         references: dict[str, tuple[str, str]]) -> tuple[list[float], list[str]]:
    """`clients` threads asking in a loop until `seconds` pass: latencies, and a line per failure."""
    latencies, failures, lock = [], [], threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        k = 0
        while time.monotonic() < deadline:
            question, stream = QUESTIONS[(i + k) % len(QUESTIONS)], i % 2 == 1
            k += 1
            start = time.monotonic()
            try:
                got = ask(port, question, max_tokens, stream)
                problem = None if got == references[question] else f"wrong answer {got!r}"
            except Exception as exc:  # any failure: counted and reported
                problem = f"{type(exc).__name__}: {exc}"
            with lock:
                latencies.append(time.monotonic() - start)
                if problem:
                    failures.append(f"client {i} {question!r} (stream={stream}): {problem}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a .gguf file or a training output_dir, as `tutorforge serve` takes")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    if not Path(args.model).exists():
        sys.exit(f"{args.model}: no such file or directory")
    proc, port, tail = start_server(args.model)
    try:
        references, alone = baseline(port, args.max_tokens)
        start = time.monotonic()
        loaded, failures = load(port, args.clients, args.seconds, args.max_tokens, references)
        wall = time.monotonic() - start
        try:
            after = ask(port, QUESTIONS[0], args.max_tokens, False) == references[QUESTIONS[0]]
        except OSError:
            after = False
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    p50, p99, base50, base99 = (percentile(loaded, 50), percentile(loaded, 99), percentile(alone, 50),
                                percentile(alone, 99))
    print(f"{'':28} {'requests':>9} {'p50 s':>8} {'p99 s':>8} {'p50 ratio':>10}")
    print(f"{'alone (baseline)':28} {len(alone):9d} {base50:8.2f} {base99:8.2f} {1.0:10.1f}")
    print(f"{f'{args.clients} clients, {args.seconds:g} s':28} {len(loaded):9d} {p50:8.2f} {p99:8.2f} "
          f"{p50 / base50:10.1f}")
    print(f"throughput {len(loaded) / wall:.2f} requests/s over {wall:.1f} s; "
          f"{len(loaded) - len(failures)} correct, {len(failures)} failed or wrong; "
          f"server answers afterwards: {after and alive}")
    for line in failures[:10]:
        print("  " + line)
    print(json.dumps({"clients": args.clients, "seconds": args.seconds, "requests": len(loaded),
                      "failed": len(failures), "p50_s": round(p50, 3), "p99_s": round(p99, 3),
                      "baseline_p50_s": round(base50, 3), "answers_after": after and alive}))
    if not alive:
        print("the server died:\n" + "".join(tail))
    return 0 if not failures and after and alive else 1


if __name__ == "__main__":
    sys.exit(main())
