#!/usr/bin/env bash
# Build the wheelhouse that deploy.yml copies to the targets (offline installs).
#   ansible/build-wheelhouse.sh [OUT_DIR] [--pi-platform]
# OUT_DIR (default ansible/wheelhouse) gets device/ and coordinator/, each with the
# NeuroEdge wheel and every dependency of its extra and of the flower extra (so that
# either transport installs from the same wheelhouse). --pi-platform downloads the
# device/ dependencies for the Raspberry Pi (aarch64, CPython 3.11) instead of this
# machine's platform (Raspberry Pi OS Bookworm 64-bit: glibc 2.36, Python 3.11).
# Needs PyPI access on the control machine only.
# PYTHON: the interpreter whose pip builds/downloads (default: python3; use 3.11).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
out=${1:-$here/wheelhouse}
pi=false
[ "${2:-}" = --pi-platform ] && pi=true
py=${PYTHON:-python3}
pip="$py -m pip --disable-pip-version-check"
mkdir -p "$out/device" "$out/coordinator"
out=$(cd "$out" && pwd)

# Build from a clean copy: pip must not leave build/ or *.egg-info in the checkout.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -C "$src" --exclude=.git --exclude=.venv --exclude=.pytest_cache --exclude='*.egg-info' \
    --exclude=build --exclude=ansible --exclude=tests --exclude=wheelhouse -cf - . | tar -C "$tmp" -xf -
$pip wheel --quiet --no-deps "$tmp" -w "$tmp/dist" >"$tmp/wheel.log" 2>&1 \
    || { cat "$tmp/wheel.log" >&2; exit 1; }
wheel=$(ls "$tmp"/dist/neuroedge-*.whl)
for flavour in device coordinator; do
    rm -f "$out/$flavour"/neuroedge-*.whl
    cp "$wheel" "$out/$flavour/"
    w="$out/$flavour/$(basename "$wheel")"
    # Dependencies are re-downloaded only when the pins (setup.cfg) change.
    stamp="$out/$flavour/.deps-$(sha256sum "$src/setup.cfg" | cut -c1-16)-$pi-flower"
    [ -e "$stamp" ] && continue
    # New pins or platform: start from an empty folder (no stale or foreign wheels).
    find "$out/$flavour" -maxdepth 1 -type f ! -name "$(basename "$wheel")" -delete
    if [ "$flavour" = device ] && $pi; then
        # pip matches --platform tags exactly: list every manylinux level glibc 2.36 runs.
        plat=(--platform manylinux2014_aarch64 --platform linux_aarch64)
        for v in 36 35 34 33 32 31 30 29 28 27 26 17; do plat+=(--platform "manylinux_2_${v}_aarch64"); done
        $pip download --quiet -d "$out/$flavour" --only-binary=:all: --python-version 3.11 \
            --implementation cp "${plat[@]}" "${w}[$flavour,flower]"
    else
        $pip download --quiet -d "$out/$flavour" "${w}[$flavour,flower]"
    fi
    rm -f "$out/$flavour"/.deps-*
    touch "$stamp"
done
echo "wheelhouse ready: $out ($(du -sh "$out" | cut -f1))"
