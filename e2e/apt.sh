# Sourced by the install scripts: Debian packages installed only when missing.

# Installs those of the packages "$@" that are not installed yet, keeping
# maintainer scripts from starting any daemon (there is no systemd here, but
# a package must not leave one running).
install_missing() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  echo "installing: ${missing[*]}"
  local policy=/usr/sbin/policy-rc.d created=0 status=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
  ((status)) || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  ((created)) && rm -f "$policy"
  return "$status"
}

# Fails, naming it, on the first program of "$@" not on PATH.
require_programs() {
  local program
  for program in "$@"; do
    command -v "$program" >/dev/null || { echo "missing $program after install" >&2; return 1; }
  done
}
