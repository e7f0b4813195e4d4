#!/usr/bin/env bash
# Run HERE (a machine with network), from anywhere in the repository, before a GPU session:
#     bash benchmarks/gpu/prepare.sh
# Fills the ignored folder .whl/ with what the GPU machine (Python 3.12, torch 2.11, no network)
# lacks for `import lightning_eff` and the kit's baselines: pydantic and its needs, torchao, Liger
# Kernel, and this package as a wheel (the package maps kernels/ -> lightning_eff.kernels, so the
# GPU machine cannot import it from the bare tree). Then run there: bash benchmarks/gpu/run.sh $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WHL=.whl
LIMIT_MIB=60  # the device tool carries at most 64 MiB of working tree, wheels included

# The dev venv's versions (pydantic-core must be the exact one this pydantic pins).
WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  torchao==0.18.0 liger-kernel==0.8.5
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

mkdir -p "$WHL"
rm -f "$WHL"/*.whl "$WHL"/SOURCES.sha1
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$WHL" "${WHEELS[@]}"
# Build from a copy of what travels to the GPU machine (tracked and unignored files): an in-tree
# build would also pack stale files left in build/ and ignored files.
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$tree"
"$PY" -m pip wheel -q --no-deps --no-build-isolation "$tree" -w "$WHL"
# run.sh compares this with the tree it runs on, to catch a wheel older than the sources.
"$PY" "$tree/benchmarks/gpu/runner.py" --source-hash > "$WHL/SOURCES.sha1"

ls -l "$WHL"
size_kib=$(du -sk "$WHL" | cut -f1)
tree_kib=$(git ls-files -co --exclude-standard -z | du --files0-from=- -ck 2>/dev/null | tail -1 | cut -f1)
echo "wheels: $((size_kib / 1024)).$((size_kib % 1024 * 10 / 1024)) MiB;" \
     "the rest of the working tree that travels: about $((tree_kib / 1024)) MiB"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "error: $WHL is over ${LIMIT_MIB} MiB: the device tool will not carry it" >&2
  exit 1
fi
echo "ok: on the GPU machine, with '.whl' carried: bash benchmarks/gpu/run.sh \$OUT"
