#!/usr/bin/env bash
# Copy the source tree (the files git tracks, plus untracked files it does not ignore: works on a
# clone and in a work tree with uncommitted changes) into DESTINATION, never the outputs of a
# local build (compiled modules, generated C, the build record, build/).  Outside a git checkout
# (an unpacked sdist), everything except those outputs.
# Usage: tools/copy_sources.sh DESTINATION
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DESTINATION="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$ROOT"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | grep -zv -e '\.so$' -e '^src/.*\.c$' -e '^src/.*\.pxi$' -e '^src/block_sizes\.h$' -e '^build/' -e '_build_info\.json$' \
        | xargs -0 -I{} cp --parents -- {} "$DESTINATION"
else
    cp -r . "$DESTINATION"
    rm -rf "$DESTINATION/build"
    find "$DESTINATION" \( -name '*.so' -o -path "$DESTINATION/src/*.c" -o -name _build_info.json \
        -o -path "$DESTINATION/src/*.pxi" -o -path "$DESTINATION/src/block_sizes.h" \) -delete
fi
