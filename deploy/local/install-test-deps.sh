#!/usr/bin/env bash
# Debian packages the test suite needs, installed only when missing (idempotent).
#   sip-tester    SIPp 3.6 (binary `sipp`), for tests/e2e and loadtest/
#   util-linux    taskset, to pin the node and SIPp to their own cores in loadtest/
#   baresip-core  baresip 1.0 (binary `baresip`, with the g711, aufile and sndfile
#                 modules), a real SIP phone for tests/e2e/test_baresip.py; the
#                 `baresip` metapackage only adds GUI/video recommends
#   prometheus    for its promtool: tests/unit/test_monitoring.py checks and unit-tests
#                 deploy/monitoring/alerts.yaml (the tests never start its server; on a
#                 systemd machine the package enables one on :9090: disable it if unwanted)
#   kamailio      the SIP load balancer in front of several nodes (deploy/kamailio/,
#                 tests/e2e/test_cluster.py runs its own; Debian's service stays off)
#   chromium, chromium-driver
#                 a real browser, headless, for the web console's tests
#                 (tests/e2e/test_console.py, through Selenium) and its screenshots
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/apt-ensure.sh" sip-tester util-linux baresip-core prometheus kamailio chromium chromium-driver
command -v sipp >/dev/null || { echo "install-test-deps: sipp still missing" >&2; exit 1; }
command -v baresip >/dev/null || { echo "install-test-deps: baresip still missing" >&2; exit 1; }
command -v promtool >/dev/null || { echo "install-test-deps: promtool still missing" >&2; exit 1; }
command -v kamailio >/dev/null || [[ -x /usr/sbin/kamailio ]] || { echo "install-test-deps: kamailio still missing" >&2; exit 1; }
command -v chromedriver >/dev/null || { echo "install-test-deps: chromedriver still missing" >&2; exit 1; }
