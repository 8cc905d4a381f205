#!/usr/bin/env bash
# Debian packages the test suite needs, installed only when missing (idempotent).
#   sip-tester  SIPp 3.6 (binary `sipp`), for tests/e2e and loadtest/
#   util-linux  taskset, to pin the node and SIPp to their own cores in loadtest/
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/apt-ensure.sh" sip-tester util-linux
command -v sipp >/dev/null || { echo "install-test-deps: sipp still missing" >&2; exit 1; }
