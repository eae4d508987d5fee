# shellcheck shell=bash
# Shared by the tools/*.sh scripts (source it; it runs nothing by itself).

# apt_install WHO PACKAGE...: installs Debian packages, as root or through sudo. It tries without
# `apt-get update` first (fast when the lists are fresh), then with it. On failure it names the
# caller and the packages and exits, so a missing tool is a failure, never a skipped check.
apt_install() {
  local who="$1"
  shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq "$@" >/dev/null; } ||
    { echo "$who: FAIL: cannot install $* (apt-get install $*)" >&2; exit 1; }
}
