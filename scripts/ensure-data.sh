#!/usr/bin/env bash
# Make sure the Fashion-MNIST IDX files are present; install Debian's dataset-fashion-mnist when
# they are not and apt is usable, otherwise say how to provide them.
set -euo pipefail
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() {
  local d=$1
  for f in $files; do [ -f "$d/$f" ] || return 1; done
}
for d in "${ROBUSTLAB_DATA:-}" "${ROBUSTLAB_DATA:-}/fashion-mnist" "${ROBUSTLAB_DATA:-}/fashion_mnist" \
         "${ROBUSTLAB_DATA:-}/FashionMNIST/raw" /usr/share/datasets/fashion-mnist; do
  [ -n "$d" ] && have "$d" && exit 0
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist" >&2
  if apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    have /usr/share/datasets/fashion-mnist && exit 0
  fi
  echo "installing dataset-fashion-mnist with apt-get failed (see apt's message above)" >&2
fi
cat >&2 <<MSG
Fashion-MNIST files not found. Provide them in one of these ways:
  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (files land in /usr/share/datasets/fashion-mnist)
  - or put $files
    in a folder and set ROBUSTLAB_DATA=/that/folder
MSG
exit 1
