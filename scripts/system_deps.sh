#!/usr/bin/env bash
# The Debian packages tutorforge uses beyond Python: bubblewrap (the sandbox for model-written code),
# golang-go (Go's text/template verifies the Ollama TEMPLATE), and, for the tests, chromium (renders
# the HTML report). Installs whichever is missing when it can (root with apt-get); otherwise says
# what to install and goes on.
set -euo pipefail
wanted=(bwrap:bubblewrap go:golang-go)
[[ "${1:-}" == "--test" ]] && wanted+=(chromium:chromium)
missing=()
for pair in "${wanted[@]}"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: please install ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
fi
