#!/usr/bin/env bash
# Install fastserve and everything it needs into .venv (Debian/Ubuntu).
#   Debian packages: libgrpc++-dev + pkg-config build the native gRPC transport (without
#   them fastserve still installs and serves gRPC on grpc.aio); nginx is used by the
#   multi-replica test; nghttp2-client (nghttp, h2load) sends already-expired gRPC calls in the
#   transport tests; libb64-0d is what tritonclient's perf_analyzer links (tests run it).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libgrpc++-dev pkg-config nginx nghttp2-client libb64-0d >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ./clients/python -e ".[test]"  # the server depends on fastserve-client (clients/python), not on PyPI

# The client alone, as its users install it, in a venv of its own: it must pull no TensorFlow
# (tests/test_client_package.py runs its README example from it).
python3 -m venv .venv-client
.venv-client/bin/pip install -q ./clients/python
