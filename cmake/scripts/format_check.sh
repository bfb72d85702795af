#!/usr/bin/env bash
# Checks that every C++ and CUDA source of strata (include/, tests/, examples/, bench/: *.hpp,
# *.cuh, *.cpp, *.cu) is formatted as .clang-format says. Prints each file clang-format would
# change, with the number of places, and exits 1 if there is any; changes nothing.
#
# The check needs clang-format 14 (Debian's clang-format-14; cmake/setup-debian.sh installs it):
# other versions format some constructs differently, so a file that passes here could fail
# elsewhere. Set CLANG_FORMAT to use another binary of version 14.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

clang_format="${CLANG_FORMAT:-clang-format-14}"
if ! command -v "$clang_format" >/dev/null 2>&1; then
  echo "format_check: $clang_format not found; install clang-format-14 (cmake/setup-debian.sh)" \
       "or point CLANG_FORMAT at a clang-format of version 14" >&2
  exit 2
fi
version="$("$clang_format" --version)"
if [[ ! "$version" =~ version\ 14\. ]]; then
  echo "format_check: $clang_format is not version 14 ($version)" >&2
  exit 2
fi
if [ ! -f .clang-format ]; then
  echo "format_check: no .clang-format in $root" >&2
  exit 2
fi

mapfile -d '' files < <(find include tests examples bench -type f \
  \( -name '*.hpp' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu' \) -print0 | sort -z)
if [ ${#files[@]} -eq 0 ]; then
  echo "format_check: no sources found under $root" >&2
  exit 2
fi

bad=0
for f in "${files[@]}"; do
  # --dry-run prints one warning per place it would change; --Werror makes any of them fail.
  if ! out="$("$clang_format" --style=file --dry-run --Werror --ferror-limit=0 "$f" 2>&1)"; then
    places="$(grep -c ': error: code should be clang-formatted' <<<"$out" || true)"
    if [ "$places" -eq 0 ]; then
      echo "format_check: $clang_format failed on $f:" >&2
      echo "$out" >&2
      exit 2
    fi
    echo "$f: $places place(s) to reformat"
    bad=$((bad + 1))
  fi
done

if [ "$bad" -ne 0 ]; then
  echo "format_check: $bad of ${#files[@]} files are not formatted;" \
       "fix with: $clang_format -i <file>..." >&2
  exit 1
fi
echo "format_check: all ${#files[@]} files are formatted"
