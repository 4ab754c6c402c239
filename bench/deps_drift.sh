#!/usr/bin/env bash
# Non-blocking drift check: the test suite against the newest releases pip resolves today (no constraints).
# CI pins constraints/ci.txt, so a new release that breaks us shows up here as a report, not as a red CI on an
# unrelated change. Writes bench/results/deps/latest.md (versions vs the pins, the pytest summary); exits 0
# whatever the suite does. --freeze: when the suite passes, also rewrite constraints/ci.txt from this resolve.
# Takes as long as .ci/run (~20 min on 2 cores); run it alone.
set -uo pipefail
cd "$(dirname "$0")/.."
freeze=0; [ "${1:-}" = "--freeze" ] && freeze=1
venv=$(mktemp -d)/venv
export TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv "$venv" && . "$venv/bin/activate"
# torch and triton stay at the pair this project targets (a newer torch is a deliberate upgrade, not drift).
pip install -q torch==2.13.0 "setuptools>=68" wheel && pip install -q --no-build-isolation triton==3.7.1 -e ".[test]"
python -m pytest -q -m "not slow" -p no:cacheprovider > "$venv/pytest.log" 2>&1
status=$?
report=bench/results/deps/latest.md
{
  echo "# Dependency drift report, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Suite against the newest releases: exit $status ($( [ $status -eq 0 ] && echo pass || echo FAIL ))."
  echo
  echo "| package | pinned (constraints/ci.txt) | newest resolved |"
  echo "|---|---|---|"
  pip freeze --exclude-editable | grep '==' | while IFS='=' read -r name _ version; do
    version=${version%%+*}  # a local build label (torch 2.13.0+cpu) is not drift
    pinned=$(grep -i "^${name}==" constraints/ci.txt | cut -d= -f3)
    [ "$pinned" != "$version" ] && echo "| $name | ${pinned:-(not pinned)} | $version |"
  done
  echo
  echo '```'
  tail -n 40 "$venv/pytest.log"
  echo '```'
} > "$report"
echo "wrote $report (suite exit $status)"
if [ $freeze -eq 1 ] && [ $status -eq 0 ]; then
  { head -n 2 constraints/ci.txt; pip freeze --all --exclude-editable | grep '==' | grep -v '^pip=='; } | sed 's/^torch==\(.*\)+cpu/torch==\1/' \
    > constraints/ci.txt.new && mv constraints/ci.txt.new constraints/ci.txt
  echo "constraints/ci.txt rewritten from this resolve"
fi
exit 0
