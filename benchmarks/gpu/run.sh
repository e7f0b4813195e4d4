#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repository copy, with .whl/ carried (made by prepare.sh here):
#     bash benchmarks/gpu/run.sh OUTDIR [--dry-run] [more runner.py options]
# Installs the carried wheels into a folder on PYTHONPATH (never from a network), then runs every
# part under its time guard (runner.py): CSV, JSON, log and plot land in OUTDIR, also after a part
# times out. --dry-run: tiny sizes on any machine, nothing installed (the test suite runs it on CPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DRY_RUN=0
for arg in "$@"; do [ "$arg" = --dry-run ] && DRY_RUN=1; done

if [ "$DRY_RUN" = 0 ]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: no .whl/*.whl: run 'bash benchmarks/gpu/prepare.sh' where there is network, and carry .whl" >&2
    exit 2
  fi
  SITE=${LEFF_KIT_SITE:-/tmp/leff-kit-site}
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if [ "$(cat .whl/SOURCES.sha1 2>/dev/null)" != "$("$PY" benchmarks/gpu/runner.py --source-hash)" ]; then
    # The wheel is older than the sources: rebuild it here if this machine's setuptools can.
    note="the carried lightning_eff wheel was built from other sources than this tree"
    rm -rf /tmp/leff-kit-wheel
    if "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation . -w /tmp/leff-kit-wheel \
       && "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" /tmp/leff-kit-wheel/*.whl; then
      note="$note; rebuilt on this machine"
    else
      note="$note; STALE: rebuilding here failed, rerun prepare.sh"
    fi
    echo "warning: $note" >&2
    export LEFF_KIT_WHEEL_NOTE="$note"
  fi
fi
exec "$PY" benchmarks/gpu/runner.py "$@"
