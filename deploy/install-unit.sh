#!/usr/bin/env bash
# Install (or update) a doorscan door unit on Raspberry Pi OS Bookworm.
#
#   sudo deploy/install-unit.sh             # from a copy of the doorscan source tree
#   deploy/install-unit.sh --dry-run        # print every step, change nothing
#
# Idempotent: run it again after an update and it reaches the same state (packages
# present, user and folders there, venv refreshed, service enabled). Every change goes
# through `step`, so --dry-run shows exactly what a real run would do; read-only checks
# (does the user exist?) run in both modes, so a dry run plans for this machine.
#
# Steps: apt packages (python3-picamera2 from Raspberry Pi OS, so the camera stack
# matches the kernel; libzbar0 for the zbar decoder); the `doorscan` system user in
# the video and gpio groups; /var/lib/doorscan (data) and /etc/doorscan (config); a venv
# with --system-site-packages, so the apt picamera2 is importable from it; the systemd
# unit and a journald size cap (the unit logs to the journal, no log files to rotate).
# The service starts once /etc/doorscan/unit.json exists (after enrollment or a bundle).
set -euo pipefail

readonly PREFIX=/opt/doorscan
readonly VENV="${PREFIX}/venv"
readonly DATA_DIR=/var/lib/doorscan
readonly CONFIG_DIR=/etc/doorscan
readonly UNIT_USER=doorscan
readonly APT_PACKAGES=(python3-picamera2 python3-venv python3-pip libzbar0)

DRY_RUN=0
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: $0 [--dry-run] [--source DIR]" >&2
    echo "  --dry-run     print each step instead of running it" >&2
    echo "  --source DIR  the doorscan source tree to install (default: ${SOURCE_DIR})" >&2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
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
if [[ "${DRY_RUN}" -eq 0 && "${EUID}" -ne 0 ]]; then
    echo "install-unit: run as root (sudo), or with --dry-run to see the steps" >&2
    exit 1
fi
# shellcheck disable=SC1091  # the OS's file, not part of this tree
codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")" || codename=unknown
if [[ "${codename}" != "bookworm" ]]; then
    note "warning: written for Raspberry Pi OS Bookworm; this is '${codename}'"
fi

note "1/6 system packages"
step apt-get update
step apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"

note "2/6 the ${UNIT_USER} user (groups video, gpio)"
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

note "3/6 data and config folders"
step install -d -o "${UNIT_USER}" -g "${UNIT_USER}" -m 0750 "${DATA_DIR}"
step install -d -o "${UNIT_USER}" -g "${UNIT_USER}" -m 0750 "${CONFIG_DIR}"
step install -d -m 0755 "${PREFIX}" "${PREFIX}/docs"

note "4/6 the venv (sees the apt picamera2) and doorscan in it"
if [[ ! -x "${VENV}/bin/python" ]]; then
    step python3 -m venv --system-site-packages "${VENV}"
fi
step "${VENV}/bin/pip" install --upgrade --no-cache-dir "${SOURCE_DIR}"
step install -m 0644 "${SOURCE_DIR}/docs/field-guide.md" "${PREFIX}/docs/field-guide.md"

note "5/6 the service and the journal's size cap"
step install -m 0644 "${SOURCE_DIR}/deploy/doorscan-unit.service" \
    /etc/systemd/system/doorscan-unit.service
step install -d -m 0755 /etc/systemd/journald.conf.d
step install -m 0644 "${SOURCE_DIR}/deploy/journald-doorscan.conf" \
    /etc/systemd/journald.conf.d/doorscan.conf
step systemctl daemon-reload
step systemctl restart systemd-journald
step systemctl enable doorscan-unit.service

note "6/6 start"
if [[ -f "${CONFIG_DIR}/unit.json" ]]; then
    step systemctl restart doorscan-unit.service
else
    note "no ${CONFIG_DIR}/unit.json yet: enroll this unit (docs/field-guide.md, Enrollment)"
    note "or put a config bundle on the boot partition; the service starts at the next boot"
fi
note "done; check it with: sudo -u ${UNIT_USER} ${VENV}/bin/python -m device selftest --config ${CONFIG_DIR}/unit.json"
