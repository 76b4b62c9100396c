#!/usr/bin/env bash
# Runs every test: installs what is missing, builds (warnings are errors), then runs the whole suite.
# A test whose prerequisite is missing fails; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-dependencies.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build --build-tests
swift test --skip-build
