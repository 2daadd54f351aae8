#!/usr/bin/env bash
# Installs what the tests need beyond the demo's tools: `kubectl kustomize`
# (Debian's kubernetes-client, unless a kubectl is on PATH already) for the
# offline checks of deploy/, and a Python venv at target/test-venv with the
# pinned e2e/requirements.txt (kubernetes-validate and its Kubernetes 1.32
# schemas; grpcio for the grpc-python client test), and a C++ compiler
# for libFuzzer, which e2e/fuzz.sh builds.
set -euo pipefail
cd "$(dirname "$0")/.."

source e2e/apt.sh

packages=()
command -v kubectl >/dev/null || packages+=(kubernetes-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v c++ >/dev/null || packages+=(g++)
install_missing "${packages[@]}"
require_programs c++
kubectl kustomize --help >/dev/null || { echo "kubectl has no kustomize" >&2; exit 1; }

venv=target/test-venv
requirements=e2e/requirements.txt
# Reinstalled only when requirements.txt changes.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
"$venv/bin/python" -c 'import kubernetes_validate, yaml, grpc'
