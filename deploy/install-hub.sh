#!/usr/bin/env bash
# Install (or update) the doorscan hub, and the Mosquitto beside it, on Debian 12 Bookworm.
#
#   sudo deploy/install-hub.sh --broker-files broker/      # from a copy of the source tree
#   deploy/install-hub.sh --dry-run                        # print every step, change nothing
#   deploy/install-hub.sh --root /tmp/hub --no-venv        # write the files into a folder
#
# Idempotent: run it again after an update and it reaches the same state (packages
# present, user and folders there, venv refreshed, units enabled). Every change goes
# through `step`, so --dry-run shows exactly what a real run would do; read-only checks
# (does the user exist? is there a hub.toml?) run in both modes, so a dry run plans for
# this machine.
#
# Steps: apt packages (python3-venv, mosquitto); the `doorscan-hub` system user;
# /etc/doorscan-hub (root-owned, group doorscan-hub: the config and certificates; the
# private keys readable by doorscan-hub alone, mode 0400), /var/lib/doorscan-hub (data) and
# /var/lib/doorscan-hub-anchors; a venv in /opt/doorscan/venv with doorscan in it; a
# starter /etc/doorscan-hub/hub.toml, only if there is none (an operator's file is never
# overwritten); with --broker-files, the files `provisioning broker-files` wrote, the
# broker's under /etc/mosquitto/doorscan and the hub's client certificate under
# /etc/doorscan-hub; the systemd units, enabled (started only with --start).
#
# --root DIR writes every file under DIR instead of /, as DESTDIR does, and runs no step
# that needs the real machine: no apt-get, no useradd, no chown, no systemctl. Those are
# printed as notes ("# not under --root: ..."), so the output is still the whole plan.
set -euo pipefail

readonly PREFIX=/opt/doorscan
readonly VENV="${PREFIX}/venv"
readonly HUB_USER=doorscan-hub
readonly CONFIG_DIR=/etc/doorscan-hub
readonly CONFIG_FILE="${CONFIG_DIR}/hub.toml"
readonly DATA_DIR=/var/lib/doorscan-hub
readonly ANCHOR_DIR=/var/lib/doorscan-hub-anchors
readonly BROKER_DIR=/etc/mosquitto/doorscan
readonly BROKER_CONF=/etc/mosquitto/conf.d/doorscan.conf
readonly SYSTEMD_DIR=/etc/systemd/system
# No libzbar0 or picamera2: the hub decodes no images. PostgreSQL is optional (a note).
readonly APT_PACKAGES=(python3-venv mosquitto)
readonly UNIT_FILES=(
    doorscan-hub.service
    doorscan-hub-anchor.service
    doorscan-hub-anchor.timer
    doorscan-hub-purge.service
    doorscan-hub-purge.timer
)
# The anchor and purge services have no [Install]: their timers start them.
readonly ENABLED_UNITS=(doorscan-hub.service doorscan-hub-anchor.timer doorscan-hub-purge.timer)
# What `provisioning broker-files` writes that this script installs.
readonly BROKER_FILES=(broker-cert.pem broker-key.pem ca.pem crl.pem acl mosquitto.conf
    hub-cert.pem hub-key.pem)

DRY_RUN=0
NO_VENV=0
START=0
ROOT=""
BROKER_SOURCE=""
FLEET_HOME=""
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: $0 [--dry-run] [--source DIR] [--broker-files DIR] [--fleet-home DIR]" >&2
    echo "       [--root DIR] [--no-venv] [--start]" >&2
    echo "  --dry-run           print each step instead of running it" >&2
    echo "  --source DIR        the doorscan source tree to install (default: ${SOURCE_DIR})" >&2
    echo "  --broker-files DIR  the folder \`provisioning broker-files --out DIR\` wrote" >&2
    echo "  --fleet-home DIR    copy the hub's sealing key and the card key from this fleet home" >&2
    echo "  --root DIR          write every file under DIR (no apt, users, owners or systemctl)" >&2
    echo "  --no-venv           leave ${VENV} as it is (no venv, no pip install)" >&2
    echo "  --start             (re)start mosquitto and the hub's units once installed" >&2
}

die() {
    echo "install-hub: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-venv) NO_VENV=1 ;;
        --start) START=1 ;;
        --source | --broker-files | --fleet-home | --root)
            [[ $# -ge 2 ]] || { usage; exit 2; }
            case "$1" in
                --source) SOURCE_DIR="$2" ;;
                --broker-files) BROKER_SOURCE="$2" ;;
                --fleet-home) FLEET_HOME="$2" ;;
                --root)
                    [[ -d "$2" ]] || die "--root $2 is not a folder"
                    ROOT="$(cd "$2" && pwd)"
                    # "/" would make a real install that skips the users and owners it needs.
                    [[ "${ROOT}" != "/" ]] || die "--root / is the machine itself: leave --root out"
                    ;;
            esac
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-hub: unknown option $1" >&2; usage; exit 2 ;;
    esac
    shift
done
# Every path written below is "${R}/etc/...": the machine's own under a real run.
readonly R="${ROOT}"

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

# A change only the real machine can take (packages, users, owners, the service
# manager): under --root the users and services it needs are not the folder's, so it is
# printed, not run.
host_step() {
    if [[ -n "${R}" ]]; then
        note "not under --root:$(printf ' %q' "$@")"
    else
        step "$@"
    fi
}

# own OWNER:GROUP PATH: the owner, which under --root is given only where this machine
# has that user and group and we are root (Mosquitto's are real here; doorscan-hub is
# not), so a scratch install still proves that Mosquitto can read its key.
own() {
    local user="${1%%:*}" group="${1##*:}"
    if [[ -z "${R}" ]] || { [[ "${EUID}" -eq 0 ]] && id -u "${user}" >/dev/null 2>&1 &&
        getent group "${group}" >/dev/null; }; then
        step chown "$1" "$2"
    else
        note "not under --root:$(printf ' %q' chown "$1" "$2")"
    fi
}

# make_dir MODE OWNER:GROUP DIR: the folder with its mode, then its owner. Owner last,
# so the folder is never more open than meant, even for a moment.
make_dir() {
    step install -d -m "$1" "${R}$3"
    own "$2" "${R}$3"
}

# put MODE OWNER:GROUP FILE TARGET: a copy of FILE at TARGET, mode first, owner last.
put() {
    step install -m "$1" "$3" "${R}$4"
    own "$2" "${R}$4"
}

# install_broker_conf FILE TARGET: broker-files' mosquitto.conf with its file paths
# pointed at ${BROKER_DIR}. broker-files writes the folder it was given (--out) unless
# told --install-dir, and a conf naming the technician's laptop folder stops Mosquitto.
install_broker_conf() {
    local staged
    staged="$(mktemp)"
    sed -E "s#^(cafile|certfile|keyfile|crlfile|acl_file) .*/([^/]+)\$#\\1 ${BROKER_DIR}/\\2#" \
        "$1" >"${staged}"
    install -m 0644 "${staged}" "$2"
    rm -f "${staged}"
}

if [[ ! -f "${SOURCE_DIR}/pyproject.toml" || ! -f "${SOURCE_DIR}/deploy/doorscan-hub.service" ]]; then
    die "${SOURCE_DIR} is not a doorscan source tree"
fi
SOURCE_DIR="$(cd "${SOURCE_DIR}" && pwd)"
if [[ -n "${BROKER_SOURCE}" ]]; then
    [[ -d "${BROKER_SOURCE}" ]] || die "--broker-files ${BROKER_SOURCE} is not a folder"
    BROKER_SOURCE="$(cd "${BROKER_SOURCE}" && pwd)"
    missing=()
    for name in "${BROKER_FILES[@]}"; do
        [[ -f "${BROKER_SOURCE}/${name}" ]] || missing+=("${name}")
    done
    # Refused before any change: half a broker setup is worse than none.
    if [[ ${#missing[@]} -gt 0 ]]; then
        die "${BROKER_SOURCE} lacks ${missing[*]}: is it what \`provisioning broker-files --out\` wrote?"
    fi
fi
if [[ -n "${FLEET_HOME}" ]]; then
    for name in hub-seal.key card-signing.pub.pem; do
        [[ -f "${FLEET_HOME}/keys/${name}" ]] ||
            die "--fleet-home ${FLEET_HOME} has no keys/${name}: is it a fleet home after \`provisioning init\`?"
    done
    FLEET_HOME="$(cd "${FLEET_HOME}" && pwd)"
fi
if [[ "${DRY_RUN}" -eq 0 && -z "${R}" && "${EUID}" -ne 0 ]]; then
    echo "install-hub: run as root (sudo), with --dry-run to see the steps, or --root DIR" >&2
    exit 1
fi
# shellcheck disable=SC1091  # the OS's file, not part of this tree
codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")" || codename=unknown
if [[ -z "${R}" && "${codename}" != "bookworm" ]]; then
    note "warning: written for Debian 12 Bookworm; this is '${codename}'"
fi

note "1/8 system packages"
host_step apt-get update
host_step apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
note "PostgreSQL is optional (a province's hub): apt-get install postgresql, then set"
note "database.url in ${CONFIG_FILE}; the starter file uses SQLite in ${DATA_DIR}"

note "2/8 the ${HUB_USER} user (no login shell)"
if [[ -z "${R}" ]] && id -u "${HUB_USER}" >/dev/null 2>&1; then
    note "${HUB_USER} exists"
else
    host_step useradd --system --user-group --home-dir "${DATA_DIR}" --no-create-home \
        --shell /usr/sbin/nologin "${HUB_USER}"
fi

note "3/8 config, data and anchor folders"
make_dir 0750 "root:${HUB_USER}" "${CONFIG_DIR}"
make_dir 0750 "${HUB_USER}:${HUB_USER}" "${DATA_DIR}"
make_dir 0750 "${HUB_USER}:${HUB_USER}" "${ANCHOR_DIR}"
step install -d -m 0755 "${R}${PREFIX}" "${R}${PREFIX}/docs"
# Named by the units' Documentation= lines.
step install -m 0644 "${SOURCE_DIR}/README.md" "${R}${PREFIX}/README.md"
step install -m 0644 "${SOURCE_DIR}/docs/security.md" "${R}${PREFIX}/docs/security.md"

note "4/8 the venv and doorscan in it"
if [[ "${NO_VENV}" -eq 1 ]]; then
    note "--no-venv: ${R}${VENV} left as it is"
else
    if [[ ! -x "${R}${VENV}/bin/python" ]]; then
        step python3 -m venv "${R}${VENV}"
    fi
    if [[ -n "${R}" ]]; then
        note "a venv's scripts name its own path: this one runs from ${R}${VENV} only"
    fi
    step "${R}${VENV}/bin/pip" install --upgrade --no-cache-dir "${SOURCE_DIR}"
fi

# On the PATH of every shell and of sudo (Debian's secure_path has /usr/local/bin, not
# the venv), so `sudo doorscan-hub ...` works as docs/deploy.md writes it.
if [[ ! -d "${R}/usr/local/bin" ]]; then
    step install -d -m 0755 "${R}/usr/local/bin"
fi
for tool in doorscan-hub doorscan-provisioning doorscan-device; do
    step ln -sfn "${R}${VENV}/bin/${tool}" "${R}/usr/local/bin/${tool}"
done

note "5/8 ${CONFIG_FILE}"
if [[ -e "${R}${CONFIG_FILE}" ]]; then
    note "${R}${CONFIG_FILE} exists: kept as it is (compare: diff -u ${R}${CONFIG_FILE} ${SOURCE_DIR}/deploy/hub.toml.example)"
else
    put 0640 "root:${HUB_USER}" "${SOURCE_DIR}/deploy/hub.toml.example" "${CONFIG_FILE}"
fi

note "6/8 Mosquitto's TLS listener and the hub's client certificate"
if [[ -z "${BROKER_SOURCE}" ]]; then
    note "no --broker-files: Mosquitto and ${CONFIG_DIR} get no certificates from this run"
else
    # Mosquitto 2 reads its certificates, and the CRL on every reload, after it has
    # become the mosquitto user: a key it cannot read stops the broker at start.
    make_dir 0750 root:mosquitto "${BROKER_DIR}"
    for name in broker-cert.pem ca.pem crl.pem acl; do
        put 0644 root:mosquitto "${BROKER_SOURCE}/${name}" "${BROKER_DIR}/${name}"
    done
    put 0640 root:mosquitto "${BROKER_SOURCE}/broker-key.pem" "${BROKER_DIR}/broker-key.pem"
    if [[ ! -d "${R}$(dirname "${BROKER_CONF}")" ]]; then
        step install -d -m 0755 "${R}$(dirname "${BROKER_CONF}")"
    fi
    step install_broker_conf "${BROKER_SOURCE}/mosquitto.conf" "${R}${BROKER_CONF}"
    put 0644 "root:${HUB_USER}" "${BROKER_SOURCE}/ca.pem" "${CONFIG_DIR}/ca.pem"
    # The hub's pair, unit-config's (hub-config), and one per worker when broker-files
    # issued them (--hub-workers).
    for cert in "${BROKER_SOURCE}"/hub-cert.pem "${BROKER_SOURCE}"/hub-config-cert.pem \
        "${BROKER_SOURCE}"/hub-[0-9]*-cert.pem; do
        [[ -f "${cert}" ]] || continue
        name="$(basename "${cert}" -cert.pem)"
        put 0644 "root:${HUB_USER}" "${cert}" "${CONFIG_DIR}/${name}-cert.pem"
        put 0400 "${HUB_USER}:${HUB_USER}" "${BROKER_SOURCE}/${name}-key.pem" \
            "${CONFIG_DIR}/${name}-key.pem"
    done
fi

note "6/8 (continued) the fleet's keys and the hub's secrets"
if [[ -n "${FLEET_HOME}" ]]; then
    put 0400 "${HUB_USER}:${HUB_USER}" "${FLEET_HOME}/keys/hub-seal.key" "${CONFIG_DIR}/hub-seal.key"
    put 0644 "root:${HUB_USER}" "${FLEET_HOME}/keys/card-signing.pub.pem" \
        "${CONFIG_DIR}/card-signing.pub.pem"
fi
# Private keys, whoever made them how (init-vault and audit keygen, run as root, write
# them 0600 as root): the hub's user alone may read them, mode 0400, as the vault demands
# of its key; nobody writes them (and the service sees /etc read-only anyway). A key
# that is a link (to certbot's, say) is left alone: chmod would change the file behind.
for name in hub-vault.key hub-seal.key audit.key http-key.pem hub-key.pem hub-config-key.pem; do
    key="${R}${CONFIG_DIR}/${name}"
    if [[ -L "${key}" ]]; then
        note "${key} is a link: its owner and mode are left as they are"
    elif [[ -f "${key}" ]]; then
        step chmod 0400 "${key}"
        own "${HUB_USER}:${HUB_USER}" "${key}"
    fi
done

note "7/8 the systemd units"
if [[ ! -d "${R}${SYSTEMD_DIR}" ]]; then
    step install -d -m 0755 "${R}${SYSTEMD_DIR}"
fi
for unit in "${UNIT_FILES[@]}"; do
    step install -m 0644 "${SOURCE_DIR}/deploy/${unit}" "${R}${SYSTEMD_DIR}/${unit}"
done
host_step systemctl daemon-reload
host_step systemctl enable "${ENABLED_UNITS[@]}"

note "8/8 start"
if [[ "${START}" -eq 1 ]]; then
    if [[ -n "${BROKER_SOURCE}" ]]; then
        host_step systemctl restart mosquitto.service
    fi
    host_step systemctl restart "${ENABLED_UNITS[@]}"
else
    note "not started (--start does it): sudo systemctl restart mosquitto ${ENABLED_UNITS[*]}"
fi

# What the starter hub.toml names that only the operator can supply; a read-only look,
# so a dry run and a second run say the same.
while read -r file how; do
    if [[ ! -e "${R}${CONFIG_DIR}/${file}" ]]; then
        note "still to do: ${CONFIG_DIR}/${file}: ${how}"
    fi
done <<EOF
hub-vault.key ${VENV}/bin/doorscan-hub init-vault ${CONFIG_DIR}/hub-vault.key, run this script again (it gives the key to ${HUB_USER}), and back the key up apart from the database
hub-seal.key run this script again with --fleet-home (the fleet home of \`provisioning init\`)
card-signing.pub.pem copy fleet/keys/card-signing.pub.pem from the fleet home
audit.key ${VENV}/bin/doorscan-hub audit keygen ${CONFIG_DIR}/audit.key, then run this script again (the anchor timer signs with it)
EOF
note "done; check it with: sudo -u ${HUB_USER} ${VENV}/bin/doorscan-hub check --config ${CONFIG_FILE}"
