#!/usr/bin/env bash
# Screenshots of every HTML report (and of `mmopt view` in Netron) for docs/reports.md: the report
# tests run as usual and keep the pictures they take in docs/images/ (report-KIND.png).
# Needs what scripts/setup.sh installs (headless Chromium, its driver, selenium).
set -euo pipefail
cd "$(dirname "$0")/.."
MMOPT_REPORT_SCREENSHOTS="$PWD/docs/images" python3 -m pytest -q tests/test_html_report.py \
  -k "chromium or view" "$@"
ls -l docs/images/report-*.png
