#!/usr/bin/env bash
# Install (or update) a doorscan door unit on Raspberry Pi OS Bookworm.
#
#   sudo deploy/install-unit.sh             # from a copy of the doorscan source tree
#   deploy/install-unit.sh --dry-run        # print every step, change nothing
#   sudo deploy/install-unit.sh --no-picamera2   # plain Debian arm64 (no Raspberry Pi archive)
#
# Idempotent: run it again after an update and it reaches the same state (packages
# present, user and folders there, venv refreshed, service enabled). Every change goes
# through `step`, so --dry-run shows exactly what a real run would do; read-only checks
# (does the user exist?) run in both modes, so a dry run plans for this machine.
#
# Steps: apt packages (python3-picamera2 from Raspberry Pi OS, so the camera stack
# matches the kernel; libzbar0 for the zbar decoder); the `doorscan` system user in
# the video and gpio groups; /var/lib/doorscan (data) and /etc/doorscan (config); the
# source tree's release as a venv of its own, /opt/doorscan/releases/<version>, with
# --system-site-packages so the apt picamera2 is importable from it, and the link
# /opt/doorscan/current to it (the release it replaces becomes `previous`); the boot
# guard; the systemd unit and a journald size cap (the unit logs to the journal, no log
# files to rotate). The service starts once /etc/doorscan/unit.json exists (after
# enrollment or a bundle). Later releases arrive signed, through the unit's own
# updates (docs/field-guide.md, part 10), into the same layout.
#
# /opt/doorscan and its releases/ folder belong to the doorscan user, whose updater adds
# releases and moves the links; the releases this script installs and the boot guard
# (in /usr/local/lib/doorscan) stay root's. With no systemd running (a chroot, an image
# being built) the service is enabled but nothing is started or reloaded.
set -euo pipefail

readonly PREFIX=/opt/doorscan
readonly GUARD_DIR=/usr/local/lib/doorscan
readonly DATA_DIR=/var/lib/doorscan
readonly CONFIG_DIR=/etc/doorscan
readonly UNIT_USER=doorscan
APT_PACKAGES=(python3-picamera2 python3-venv python3-pip libzbar0)

DRY_RUN=0
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: $0 [--dry-run] [--source DIR]" >&2
    echo "  --dry-run     print each step instead of running it" >&2
    echo "  --source DIR  the doorscan source tree to install (default: ${SOURCE_DIR})" >&2
    echo "  --no-picamera2  leave out the Raspberry Pi camera stack (not in Debian's archive;" >&2
    echo "                  the unit then reads image files or a USB camera, not the Pi camera)" >&2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-picamera2) APT_PACKAGES=("${APT_PACKAGES[@]:1}") ;;
        --source)
            [[ $# -ge 2 ]] || { usage; exit 2; }
            SOURCE_DIR="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-unit: unknown option $1" >&2; usage; exit 2 ;;
    esac
    shift
done

# One change to the system: printed under --dry-run, run otherwise.
step() {
    if [[ "${DRY_RUN}" -eq 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

note() {
    printf '# %s\n' "$*"
}

if [[ ! -f "${SOURCE_DIR}/pyproject.toml" || ! -f "${SOURCE_DIR}/deploy/doorscan-unit.service" ]]; then
    echo "install-unit: ${SOURCE_DIR} is not a doorscan source tree" >&2
    exit 2
fi
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "${SOURCE_DIR}/doorscan/__init__.py")"
if [[ ! "${VERSION}" =~ ^[0-9]+\.[0-9]+\.[0-9]+([a-z]+[0-9]+)?$ ]]; then
    echo "install-unit: no release number in ${SOURCE_DIR}/doorscan/__init__.py" >&2
    exit 2
fi
readonly RELEASE="${PREFIX}/releases/${VERSION}"
if [[ "${DRY_RUN}" -eq 0 && "${EUID}" -ne 0 ]]; then
    echo "install-unit: run as root (sudo), or with --dry-run to see the steps" >&2
    exit 1
fi
# shellcheck disable=SC1091  # the OS's file, not part of this tree
codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")" || codename=unknown
if [[ "${codename}" != "bookworm" ]]; then
    note "warning: written for Raspberry Pi OS Bookworm; this is '${codename}'"
fi

note "1/7 system packages"
step apt-get update
step apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"

note "2/7 the ${UNIT_USER} user (groups video, gpio)"
for group in video gpio; do
    if ! getent group "${group}" >/dev/null; then
        step groupadd --system "${group}"
    fi
done
if id -u "${UNIT_USER}" >/dev/null 2>&1; then
    step usermod --append --groups video,gpio "${UNIT_USER}"
else
    step useradd --system --home-dir "${DATA_DIR}" --no-create-home \
        --shell /usr/sbin/nologin --groups video,gpio "${UNIT_USER}"
fi

note "3/7 data and config folders"
step install -d -o "${UNIT_USER}" -g "${UNIT_USER}" -m 0750 "${DATA_DIR}"
step install -d -o "${UNIT_USER}" -g "${UNIT_USER}" -m 0750 "${CONFIG_DIR}"
step install -d -o "${UNIT_USER}" -g "${UNIT_USER}" -m 0755 "${PREFIX}" "${PREFIX}/releases"
step install -d -m 0755 "${PREFIX}/docs"

note "4/7 release ${VERSION}: a venv of its own (sees the apt picamera2), doorscan in it"
if [[ ! -x "${RELEASE}/bin/python" ]]; then
    step python3 -m venv --system-site-packages "${RELEASE}"
fi
step "${RELEASE}/bin/pip" install --upgrade --no-cache-dir "${SOURCE_DIR}"
step install -m 0644 "${SOURCE_DIR}/docs/field-guide.md" "${PREFIX}/docs/field-guide.md"

note "5/7 ${PREFIX}/current -> releases/${VERSION}, and the boot guard"
running="$(readlink "${PREFIX}/current" 2>/dev/null || true)"
if [[ -n "${running}" && "${running}" != "releases/${VERSION}" ]]; then
    step ln -sfn "${running}" "${PREFIX}/previous"
    step chown -h "${UNIT_USER}:${UNIT_USER}" "${PREFIX}/previous"
fi
step ln -sfn "releases/${VERSION}" "${PREFIX}/current"
step chown -h "${UNIT_USER}:${UNIT_USER}" "${PREFIX}/current"
step install -d -m 0755 "${GUARD_DIR}"
step install -m 0644 "${SOURCE_DIR}/device/boot_guard.py" "${GUARD_DIR}/boot-guard.py"

note "6/7 the service and the journal's size cap"
step install -m 0644 "${SOURCE_DIR}/deploy/doorscan-unit.service" \
    /etc/systemd/system/doorscan-unit.service
step install -d -m 0755 /etc/systemd/journald.conf.d
step install -m 0644 "${SOURCE_DIR}/deploy/journald-doorscan.conf" \
    /etc/systemd/journald.conf.d/doorscan.conf
step systemctl enable doorscan-unit.service
if [[ ! -d /run/systemd/system ]]; then
    note "systemd is not running here (a chroot, an image being built): nothing to start;"
    note "the unit starts at the next boot"
    exit 0
fi
step systemctl daemon-reload
step systemctl restart systemd-journald

note "7/7 start"
if [[ -f "${CONFIG_DIR}/unit.json" ]]; then
    step systemctl restart doorscan-unit.service
else
    note "no ${CONFIG_DIR}/unit.json yet: enroll this unit (docs/field-guide.md, Enrollment)"
    note "or put a config bundle on the boot partition; the service starts at the next boot"
fi
note "done; check it with: sudo -u ${UNIT_USER} ${PREFIX}/current/bin/python -m device selftest --config ${CONFIG_DIR}/unit.json"
