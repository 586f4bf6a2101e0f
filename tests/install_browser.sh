#!/usr/bin/env bash
# What tests/test_playground_browser.py drives: Debian's chromium and chromium-driver (a test tool's own
# browser download does not work on these machines). Part of the README's test command, so CI on a fresh
# clone installs them. Does nothing when both are present; installs only as root where apt-get exists;
# otherwise it says why and exits 0, and the browser tests skip with that reason in the pytest summary.
set -u
have() { command -v "$1" >/dev/null 2>&1; }
if { have chromium || have chromium-browser || have google-chrome; } && have chromedriver; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
    echo "install_browser.sh: chromium and chromedriver are missing and need root and apt-get to install;" \
         "the browser tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "install_browser.sh: apt-get could not install chromium chromium-driver; the browser tests will skip" >&2
fi
exit 0
