#!/usr/bin/env bash
# Makes sure the headless browser the end-to-end tests drive is installed: Debian's chromium at
# /usr/bin/chromium. Installs it with apt when it is missing and we are root, and otherwise does
# nothing. Prints one line saying what it did. Exits non-zero if chromium is not available.
# Safe to run any number of times.
set -uo pipefail

CHROMIUM=/usr/bin/chromium

say() { printf '%-9s %s\n' 'chromium:' "$1"; }

version() { "$CHROMIUM" --version 2>/dev/null | head -n 1; }

main() {
  case "${1:-}" in
    '') ;;
    -h|--help)
      sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
      echo "usage: scripts/browser.sh"
      return 0 ;;
    *) echo "usage: scripts/browser.sh" >&2; return 2 ;;
  esac

  if [ -x "$CHROMIUM" ]; then
    say "already installed ($(version)) at $CHROMIUM; nothing to do"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "FAILED: $CHROMIUM is missing and installing it needs root (apt-get install chromium)"
    return 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1; then
    say "FAILED: apt-get update failed; cannot install chromium"
    return 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
    say "FAILED: apt-get install chromium failed"
    return 1
  fi
  if [ ! -x "$CHROMIUM" ]; then
    say "FAILED: the chromium package installed but $CHROMIUM does not exist"
    return 1
  fi
  say "installed $(version) at $CHROMIUM"
}

main "$@"
