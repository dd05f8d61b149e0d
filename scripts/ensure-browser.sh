#!/usr/bin/env bash
# Make sure a headless browser for the report tests is present: Debian's chromium and its
# chromium-driver (/usr/bin/chromedriver). Install them when they are not and apt is usable;
# otherwise say how to, and that the browser tests will skip. Never fails: the browser is optional.
have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
have && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "chromium/chromedriver not found: installing Debian's chromium and chromium-driver" >&2
  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
  have && exit 0
  echo "installing chromium chromium-driver with apt-get failed (see apt's message above): the browser tests will skip" >&2
  exit 0
fi
echo "chromium/chromedriver not found: sudo apt-get install chromium chromium-driver (the browser tests skip until then)" >&2
exit 0
