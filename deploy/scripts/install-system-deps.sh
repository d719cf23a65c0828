#!/usr/bin/env bash
# Installs what the local stack and the tests need from the operating system: the PostgreSQL
# server binaries, kcat, and promtool (Debian's `prometheus` package; the tests check the
# alert rules in deploy/prometheus with it). On Debian as root it runs apt-get; anywhere else
# it prints exactly what to install and exits 1. Quiet and quick when everything is there.
set -euo pipefail

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
have_kcat() { command -v kcat >/dev/null 2>&1; }
have_promtool() { command -v promtool >/dev/null 2>&1; }

missing=()
have_postgres || missing+=(postgresql)
have_kcat || missing+=(kcat)
have_promtool || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ -f /etc/debian_version ] && [ "$(id -u)" -eq 0 ]; then
  echo "installing from Debian's packages: ${missing[*]}"
  # The stack runs its own instances; Debian's default cluster on port 5432 is not wanted.
  mkdir -p /etc/postgresql-common
  if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus package starts a server on port 9090; only its promtool is wanted.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  exit 0
fi

echo "missing: ${missing[*]}" >&2
echo "install them with your package manager, for example:" >&2
echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
echo "  macOS:         brew install postgresql@15 kcat prometheus" >&2
echo "(promtool comes with the prometheus package; any 2.x release or later does)" >&2
exit 1
