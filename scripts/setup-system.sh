#!/usr/bin/env bash
# Install the Debian packages vmscan needs, only those that are missing, so that
# `make test` and `make demo` are quick once a machine is set up.
set -euo pipefail
PKGS=(
  libguestfs-tools python3-guestfs linux-image-amd64 qemu-utils python3-venv
  clamav-daemon clamav clamdscan debootstrap rpm libhivex-bin python3-hivex sqlite3 xz-utils
  chromium gdisk cryptsetup-bin libvirt-daemon-system libvirt-clients python3-libvirt
  qemu-guest-agent cpio
)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's clamav-daemon/freshclam services try to reach the internet; vmscan
# runs its own clamd, so keep the system ones from failing loudly at boot.
$SUDO systemctl disable --now clamav-freshclam clamav-daemon >/dev/null 2>&1 || true
