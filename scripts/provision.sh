#!/usr/bin/env bash
# Make sure the command-line tools a make target needs are on PATH, installing the missing ones from
# Debian's packages. Usage: bash scripts/provision.sh TOOL... (TOOL: promtool, npm, wrk, chromium).
#
# Each tool is looked up with `command -v` first, so apt only runs when something is missing. As root
# (CI, a fresh container) the missing packages are installed with apt-get; otherwise nothing is
# installed and the script fails naming the one command to run.
set -euo pipefail

declare -A PACKAGE=(
  [promtool]=prometheus  # tests/sweep/test_alert_rules.py: promtool check/test rules (ops/prometheus)
  [npm]="nodejs npm"     # tests/sdk: `npm ci` installs the official @trigger.dev/sdk
  [wrk]=wrk              # bench/trigger.py: the HTTP load generator
  [chromium]=chromium    # tests/browser: the headless browser Playwright drives (/usr/bin/chromium)
)

(($#)) || { echo "usage: $0 TOOL... (one of: ${!PACKAGE[*]})" >&2; exit 2; }

missing=() packages=()
for tool in "$@"; do
  [[ -n ${PACKAGE[$tool]:-} ]] || { echo "$0: no Debian package known for '$tool'" >&2; exit 2; }
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=("$tool")
    read -r -a pkgs <<<"${PACKAGE[$tool]}"
    packages+=("${pkgs[@]}")
  fi
done
((${#missing[@]})) || exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]} (Debian packages: ${packages[*]}). Run: sudo bash $0 ${missing[*]}" >&2
  else
    echo "missing: ${missing[*]}; no apt-get here: install ${missing[*]} with the system's package manager" >&2
  fi
  exit 1
fi

echo "provision: installing ${packages[*]} for ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is wanted
apt-get install -y -qq --no-install-recommends ${packages[*]} >/dev/null
for tool in "${missing[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$0: installed ${PACKAGE[$tool]} but '$tool' is still not on PATH" >&2; exit 1; }
done
