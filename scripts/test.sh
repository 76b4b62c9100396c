#!/usr/bin/env bash
# Runs every test: installs what is missing, builds (warnings are errors), then runs the whole suite.
# A test whose prerequisite is missing fails; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-dependencies.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build --build-tests
# The lab's test loads both cores for minutes (MariaDB under a workload, FUSE, two replicads); it runs on its own,
# after the rest, so that the other suites' timers are not starved by it.
swift test --skip-build --skip LabTests
swift test --skip-build --filter LabTests
