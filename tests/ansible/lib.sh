# Helpers for run_e2e.sh: throw-away Debian 12 targets booted with systemd-nspawn, each
# in its own network namespace, joined by a bridge inside a private "LAN" namespace
# that the host reaches through one veth. Everything created is recorded and removed
# by teardown (called from the EXIT trap).
# shellcheck shell=bash

CREATED_NETNS=()      # namespaces we added
CREATED_LINKS=()      # host-side links we added
NSPAWN_PIDS=()        # systemd-nspawn processes we started
MOUNTED=()            # mounts we made

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# What the targets' Debian 12 image holds: a Raspberry Pi OS Lite or Debian 12 server
# as the playbook finds it, plus the Debian packages the playbook installs (targets
# have no mirror, so apt finds them already installed).
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,openssh-server,sudo,python3,python3-venv,python3-apt,ca-certificates,iproute2,curl,nftables,unattended-upgrades,systemd-timesyncd,openssl,acl,nginx

# rootfs_tarball CACHE: the cached image's path; its name changes with the package list.
rootfs_tarball() {
    echo "$1/rootfs-bookworm-$(printf '%s' "$ROOTFS_PACKAGES" | sha256sum | cut -c1-12).tar"
}

# ensure_rootfs TARBALL: build it with debootstrap when missing (images of other
# package lists are removed: one image in the cache).
ensure_rootfs() {
    local tarball=$1 build
    if [ -s "$tarball" ]; then return 0; fi
    log "building the Debian 12 rootfs with debootstrap (about 2-3 minutes)"
    find "$(dirname "$tarball")" -maxdepth 1 -name 'rootfs-bookworm*.tar' ! -path "$tarball" -delete
    build=$(mktemp -d "$(dirname "$tarball")/rootfs-build.XXXXXX")
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" \
        bookworm "$build" http://deb.debian.org/debian >"$build.log" 2>&1 \
        || { tail -n 20 "$build.log" >&2; rm -rf "$build"; return 1; }
    rm -f "$build"/var/cache/apt/archives/*.deb
    chmod 0755 "$build"          # mktemp made it 0700: it becomes the targets' /
    tar -C "$build" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$build" "$build.log"
}

# lan_up PREFIX SUBNET(a.b.c): bridge in namespace PREFIX-lan, host gets SUBNET.1/24.
lan_up() {
    local p=$1 net=$2
    ip netns add "$p-lan"; CREATED_NETNS+=("$p-lan")
    ip -n "$p-lan" link set lo up
    ip -n "$p-lan" link add br0 type bridge
    ip -n "$p-lan" link set br0 up
    ip link add "${p}h" type veth peer name "${p}hl"; CREATED_LINKS+=("${p}h")
    ip link set "${p}hl" netns "$p-lan"
    ip -n "$p-lan" link set "${p}hl" master br0 up
    ip addr add "$net.1/24" dev "${p}h"
    ip link set "${p}h" up
}

# target_net PREFIX NAME IP: the target's network namespace, with its address on the LAN.
target_net() {
    local p=$1 name=$2 ipaddr=$3 ns=$1-$2
    ip netns add "$ns"; CREATED_NETNS+=("$ns")
    ip -n "$ns" link set lo up
    ip link add "${p}${name:0:5}" type veth peer name "${p}${name:0:5}c"
    ip link set "${p}${name:0:5}" netns "$p-lan"
    ip -n "$p-lan" link set "${p}${name:0:5}" master br0 up
    ip link set "${p}${name:0:5}c" netns "$ns"
    ip -n "$ns" link set "${p}${name:0:5}c" name eth0
    ip -n "$ns" addr add "$ipaddr/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# target_rootfs NAME ROOTFS_TAR WORK PUBKEY: a fresh Debian 12 in WORK/NAME that lets
# "pi" in with PUBKEY and passwordless sudo, like a new SD card or server.
target_rootfs() {
    local name=$1 tarball=$2 work=$3 pubkey=$4 dir
    dir=$work/$name
    mkdir -p "$dir"
    tar -C "$dir" -xf "$tarball"
    chmod 0755 "$dir"
    echo "$name" >"$dir/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" >"$dir/etc/hosts"
    : >"$dir/etc/machine-id"
    chroot "$dir" useradd -m -s /bin/bash pi
    echo 'pi ALL=(ALL) NOPASSWD:ALL' >"$dir/etc/sudoers.d/010_pi-nopasswd"
    chmod 0440 "$dir/etc/sudoers.d/010_pi-nopasswd"
    install -d -m 0700 -o 1000 -g 1000 "$dir/home/pi/.ssh"
    install -m 0600 -o 1000 -g 1000 "$pubkey" "$dir/home/pi/.ssh/authorized_keys"
    printf 'PasswordAuthentication no\nUseDNS no\n' >"$dir/etc/ssh/sshd_config.d/ci.conf"
    # Units that make no sense in a throw-away container.
    for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        rm -f "$dir/etc/systemd/system/timers.target.wants/$u"
    done
    # Installed ahead (no mirror here) but off, as on a machine without it: the
    # playbook enables nginx where it terminates TLS.
    rm -f "$dir/etc/systemd/system/multi-user.target.wants/nginx.service"
}

# target_boot PREFIX NAME WORK: boot the container with systemd as PID 1 (its console
# in $LOGS, default WORK). CAP_NET_ADMIN (for nftables) only acts on the target's own
# network namespace.
declare -A TARGET_PID=()
target_boot() {
    local p=$1 name=$2 work=$3
    if ! mountpoint -q /run/systemd/nspawn; then
        mkdir -p /run/systemd/nspawn
        mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
        MOUNTED+=(/run/systemd/nspawn)
    fi
    systemd-nspawn -q -D "$work/$name" --boot --register=no --keep-unit --console=passive \
        -M "$p-$name" --capability=CAP_NET_ADMIN --network-namespace-path="/run/netns/$p-$name" \
        >>"${LOGS:-$work}/$name.console.log" 2>&1 &
    NSPAWN_PIDS+=($!)
    TARGET_PID[$name]=$!
}

# target_replace PREFIX NAME ROOTFS_TAR WORK PUBKEY: power the target off and boot a
# fresh one in its place (same name, address and network): a replacement machine.
target_replace() {
    local p=$1 name=$2 pid=${TARGET_PID[$2]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "${4:?}/$name"
    target_rootfs "$name" "$3" "$4" "$5"
    target_boot "$p" "$name" "$4"
}

# wait_ssh KEY IP [SECONDS]
wait_ssh() {
    local key=$1 ipaddr=$2 deadline=$((SECONDS + ${3:-90}))
    while [ $SECONDS -lt $deadline ]; do
        if ssh_t "$key" "$ipaddr" true 2>/dev/null; then return 0; fi
        sleep 1
    done
    return 1
}

ssh_t() {
    local key=$1 ipaddr=$2; shift 2
    ssh -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 \
        "pi@$ipaddr" "$@"
}

teardown() {
    local pid i
    set +e
    for pid in "${NSPAWN_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${NSPAWN_PIDS[@]}"; do
        for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for i in "${CREATED_LINKS[@]}"; do ip link del "$i" 2>/dev/null; done
    for i in "${CREATED_NETNS[@]}"; do ip netns del "$i" 2>/dev/null; done
    for i in "${MOUNTED[@]}"; do umount "$i" 2>/dev/null || umount -l "$i" 2>/dev/null; done
    set -e
}
