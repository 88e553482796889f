#!/usr/bin/env bash
# The arm64 Debian Bookworm root that `make pi-check` runs the unit in, under qemu-user-static.
#
#   picheck/root.sh ensure    # the cached root's tarball, built first if missing or stale
#
# Raspberry Pi OS is Debian Bookworm for arm64 plus the Raspberry Pi archive (camera stack,
# firmware). This root is the Debian part: debootstrap's minimal base with Python, then what
# deploy/install-unit.sh needs before it runs (its own apt-get install is run again inside
# by the check). systemd is installed for `systemctl enable`, which works without a running
# systemd; nothing can start a service in a chroot.
#
# The tarball is kept outside any checkout (CACHE_DIR, default /var/cache/doorscan-pi) and
# rebuilt when the recipe below changes (its key is written into the root). A cold build
# is mostly debootstrap's package scripts under emulation; the check then extracts the
# tarball into a scratch folder of its own.
set -euo pipefail

readonly CACHE_DIR="${CACHE_DIR:-/var/cache/doorscan-pi}"
readonly MIRROR="${MIRROR:-http://deb.debian.org/debian}"
readonly TARBALL="${CACHE_DIR}/bookworm-arm64.tar.zst"
readonly BASE_PACKAGES="python3,ca-certificates"
readonly APT_PACKAGES=(python3-venv python3-pip libzbar0 systemd)
readonly RECIPE="v1 ${MIRROR} ${BASE_PACKAGES} ${APT_PACKAGES[*]}"

say() { printf '# pi-check: %s\n' "$*" >&2; }

# The host runs aarch64 programs through qemu-user-static; the F flag (set by Debian's
# binfmt-support registration) opens the emulator at registration, so the chroot needs
# no copy of it.
host_ready() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v zstd >/dev/null || missing+=(zstd)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    [[ -e /proc/sys/fs/binfmt_misc/register ]] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
        say "qemu-aarch64 is registered without the F flag: the chroot could not run"
        exit 1
    }
}

mounted_under() {
    grep -q " $1/" /proc/mounts
}

build() {
    local root="${CACHE_DIR}/build"
    if mounted_under "${root}"; then
        say "something is still mounted under ${root}; not deleting it"
        exit 1
    fi
    rm -rf --one-file-system "${root}"
    mkdir -p "${root}"
    say "debootstrap"
    debootstrap --arch=arm64 --variant=minbase --include="${BASE_PACKAGES}" \
        bookworm "${root}" "${MIRROR}" >"${CACHE_DIR}/debootstrap.log" 2>&1 || {
        tail -20 "${CACHE_DIR}/debootstrap.log" >&2
        exit 1
    }
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "${MIRROR}" "${MIRROR}" \
        >"${root}/etc/apt/sources.list"
    printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\n' \
        >"${root}/etc/apt/apt.conf.d/90pi-check"
    # Package scripts must not start services in a chroot (Bookworm's invoke-rc.d already
    # refuses without an init; this says so for every package).
    printf '#!/bin/sh\nexit 101\n' >"${root}/usr/sbin/policy-rc.d"
    chmod 0755 "${root}/usr/sbin/policy-rc.d"
    cp -L /etc/resolv.conf "${root}/etc/resolv.conf"
    mount -t proc proc "${root}/proc"
    trap 'umount "${root}/proc"' EXIT
    say "apt-get install ${APT_PACKAGES[*]}"
    chroot "${root}" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive sh -c \
        "apt-get update -q && apt-get install -y -q ${APT_PACKAGES[*]} && apt-get clean" \
        >"${CACHE_DIR}/apt.log" 2>&1 || {
        tail -20 "${CACHE_DIR}/apt.log" >&2
        exit 1
    }
    umount "${root}/proc"
    trap - EXIT
    rm -rf "${root}/var/lib/apt/lists/"* "${root}/etc/resolv.conf"
    echo "${RECIPE}" >"${root}/etc/doorscan-pi-recipe"
    tar --numeric-owner --xattrs --one-file-system -C "${root}" -I 'zstd -T0 -3' \
        -cpf "${TARBALL}.new" .
    mv "${TARBALL}.new" "${TARBALL}"
    rm -rf --one-file-system "${root}"
    say "cached ${TARBALL} ($(du -h "${TARBALL}" | cut -f1))"
}

fresh() {
    [[ -f "${TARBALL}" ]] &&
        [[ "$(tar -I zstd -xOf "${TARBALL}" ./etc/doorscan-pi-recipe 2>/dev/null)" == "${RECIPE}" ]]
}

case "${1:-}" in
    ensure)
        [[ "${EUID}" -eq 0 ]] || { say "run as root: debootstrap, chroot and mounts need it"; exit 1; }
        mkdir -p "${CACHE_DIR}"
        host_ready
        fresh || build
        echo "${TARBALL}"
        ;;
    *)
        echo "usage: $0 ensure" >&2
        exit 2
        ;;
esac
