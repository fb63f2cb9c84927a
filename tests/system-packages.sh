#!/bin/sh
# What the test suite needs from Debian beyond PyPI: the headless browser that
# tests/test_liveview.py drives. Installs it when missing (as root, or through
# sudo when there is one); does nothing when it is there.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
run() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
  echo "tests need Debian's chromium and chromium-driver: run as root: apt-get install -y chromium chromium-driver" >&2
  exit 1; fi; }
run apt-get update -qq
DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq chromium chromium-driver >/dev/null
