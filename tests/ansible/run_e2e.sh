#!/usr/bin/env bash
# End-to-end test of ansible/deploy.yml, backup.yml and restore.yml: syntax check,
# ansible-lint, then real runs against a coordinator and two Raspberry-Pi-like targets
# (Debian 12 booted with systemd-nspawn, systemd as PID 1, reached over real SSH as "pi"
# with passwordless sudo), installing from a wheelhouse so that the targets need no
# internet. pi1 federates over HTTPS and serves its UI through nginx; pi2 federates over
# Flower. Checks: deploy_checks (tls_checks.sh, flower_checks.sh, backup_checks.sh).
#
#   sudo tests/ansible/run_e2e.sh          # root, Debian 12 host, ~2 cores
#
# Caches (never required, rebuilt when missing) under $NEUROEDGE_CI_CACHE
# (/var/cache/neuroedge-ci): the Debian rootfs tarball, the ansible venv, the wheelhouse.
# Cases are uploaded from the shared dataset ($NEUROEDGE_E2E_SLICES, default
# ../shared/data/brain_tumor_dataset beside the checkout, with yes/ and no/).
# Prints "ansible-e2e: N passed, M failed" last; exits non-zero when M > 0.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${NEUROEDGE_CI_CACHE:-/var/cache/neuroedge-ci}
SUBNET=${NEUROEDGE_E2E_SUBNET:-10.250.77}     # our own /24, only inside our namespaces
SLICES=${NEUROEDGE_E2E_SLICES:-$REPO/../shared/data/brain_tumor_dataset}
ANSIBLE_CORE_PIN=${ANSIBLE_CORE_PIN:-ansible-core==2.17.14}
ANSIBLE_LINT_PIN=${ANSIBLE_LINT_PIN:-ansible-lint==26.6.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# shellcheck source=tests/ansible/lib.sh
source "$HERE/lib.sh"
# shellcheck source=tests/ansible/deploy_checks.sh
source "$HERE/deploy_checks.sh"
# shellcheck source=tests/ansible/tls_checks.sh
source "$HERE/tls_checks.sh"
# shellcheck source=tests/ansible/flower_checks.sh
source "$HERE/flower_checks.sh"
# shellcheck source=tests/ansible/backup_checks.sh
source "$HERE/backup_checks.sh"

PASSED=0; FAILED=0
check() {  # check NAME COMMAND...
    local name=$1; shift
    if "$@" >>"$WORK/checks.log" 2>&1; then
        PASSED=$((PASSED + 1)); log "PASS $name"
    else
        FAILED=$((FAILED + 1)); log "FAIL $name (see $WORK/checks.log)"
    fi
}

[ "$(id -u)" = 0 ] || { echo "run_e2e.sh: needs root (namespaces, systemd-nspawn)" >&2; exit 2; }
[ -d "$SLICES/yes" ] && [ -d "$SLICES/no" ] \
    || { echo "run_e2e.sh: no yes/ and no/ slices in $SLICES (set NEUROEDGE_E2E_SLICES)" >&2; exit 2; }
T0=$SECONDS
mkdir -p "$CACHE"
WORK=$(mktemp -d /var/tmp/neuroedge-e2e.XXXXXX)
LOGS=$WORK
# The targets' root filesystems (about 5 GB) go to a tmpfs when memory allows: unpacking,
# pip and the final removal then cost no disk I/O (on a busy disk, deleting them took
# minutes). NEUROEDGE_E2E_TMPFS=0 or 1 forces the choice.
TARGETS=$WORK/targets
mkdir "$TARGETS"
P=nx$(printf '%04x' $((RANDOM % 65536)))
KEEP=${NEUROEDGE_E2E_KEEP:-0}
SUMMARY_DONE=0
finish() {
    local rc=$? t=$SECONDS
    teardown
    if [ "$SUMMARY_DONE" = 0 ]; then   # aborted before the end: count it, still summarise
        FAILED=$((FAILED + 1))
        log "FAIL aborted (exit $rc) before all checks ran"
        [ "$rc" -ne 0 ] || rc=1
    fi
    rm -rf "$TARGETS"   # the (large) root filesystems; nothing left to remove on tmpfs
    log "teardown: $((SECONDS - t)) s; total: $((SECONDS - T0)) s"
    if [ "$KEEP" = 1 ] || [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    echo "ansible-e2e: $PASSED passed, $FAILED failed"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM
available_gib=$(awk '/^MemAvailable/ {print int($2 / 1048576)}' /proc/meminfo)
if [ "${NEUROEDGE_E2E_TMPFS:-auto}" = 1 ] \
   || { [ "${NEUROEDGE_E2E_TMPFS:-auto}" = auto ] && [ "$available_gib" -ge 12 ]; }; then
    mount -t tmpfs -o size=10g,mode=0755 neuroedge-e2e "$TARGETS"
    MOUNTED+=("$TARGETS")
    log "targets on a tmpfs ($available_gib GiB of memory available)"
fi

# --- host tools --------------------------------------------------------------------
need=()
for c in debootstrap:debootstrap systemd-nspawn:systemd-container ssh:openssh-client \
         curl:curl ip:iproute2 ssh-keygen:openssh-client openssl:openssl; do
    command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ip -br addr | grep " $SUBNET\." >/dev/null; then
    echo "run_e2e.sh: $SUBNET.0/24 is already in use on this host (another run?)" >&2; exit 2
fi

# --- ansible venv (pinned) ----------------------------------------------------------
AV=$CACHE/ansible-venv
if ! "$AV/bin/python" -m pip show -q "${ANSIBLE_CORE_PIN%%=*}" 2>/dev/null \
   || [ "$("$AV/bin/python" -m pip show ansible-core 2>/dev/null | sed -n 's/^Version: //p')" != "${ANSIBLE_CORE_PIN##*==}" ] \
   || [ "$("$AV/bin/python" -m pip show ansible-lint 2>/dev/null | sed -n 's/^Version: //p')" != "${ANSIBLE_LINT_PIN##*==}" ]; then
    log "creating the ansible venv in $AV"
    rm -rf "$AV"; python3 -m venv "$AV"
    "$AV/bin/pip" install -q "$ANSIBLE_CORE_PIN" "$ANSIBLE_LINT_PIN"
fi
export PATH=$AV/bin:$PATH

# --- wheelhouse (project wheel rebuilt every run; dependencies cached) ---------------
T=$SECONDS
# Python 3.11 with pip (the ansible venv's), like the targets' Debian 12 / Raspberry Pi OS.
PYTHON=${HOST_PY:-$AV/bin/python} "$REPO/ansible/build-wheelhouse.sh" "$CACHE/wheelhouse-ci" >&2
log "wheelhouse: $((SECONDS - T)) s"

# --- targets ------------------------------------------------------------------------
T=$SECONDS
ROOTFS=$(rootfs_tarball "$CACHE")
ensure_rootfs "$ROOTFS"
ssh-keygen -q -t ed25519 -N '' -C neuroedge-e2e -f "$WORK/id_ed25519"
KEY=$WORK/id_ed25519
COORD_IP=$SUBNET.10
PI_IP=$SUBNET.11
PI2_IP=$SUBNET.12
lan_up "$P" "$SUBNET"
# A second host address outside the "clinic network" ($SUBNET.0/25) for the firewall check.
ip addr add "$SUBNET.200/24" dev "${P}h"
for name in coord pi1 pi2; do     # unpacked side by side: I/O, not CPU
    target_rootfs "$name" "$ROOTFS" "$TARGETS" "$KEY.pub" &
done
wait
for t in "coord=$COORD_IP" "pi1=$PI_IP" "pi2=$PI2_IP"; do
    target_net "$P" "${t%%=*}" "${t#*=}"
    target_boot "$P" "${t%%=*}" "$TARGETS"
done
for t in "coord=$COORD_IP" "pi1=$PI_IP" "pi2=$PI2_IP"; do
    wait_ssh "$KEY" "${t#*=}" \
        || { log "target ${t%%=*}: no SSH after 90 s (console: $WORK/${t%%=*}.console.log)"; exit 1; }
done
log "targets up: $((SECONDS - T)) s"

cat >"$WORK/hosts.ini" <<INI
[pis]
pi1 ansible_host=$PI_IP edge_device_https=true
pi2 ansible_host=$PI2_IP edge_device_transport=flower

[coordinator]
coord ansible_host=$COORD_IP

[all:vars]
ansible_user=pi
ansible_ssh_private_key_file=$KEY
INI
ADMIN_PASSWORD=$(head -c 18 /dev/urandom | base64)
cat >"$WORK/ci-vars.yml" <<YML
common_wheelhouse: $CACHE/wheelhouse-ci
common_offline: true
common_apt_update_cache: false
common_firewall_clinic_networks: ["$SUBNET.0/25"]
edge_device_serial: 2
edge_device_admin_password: "$ADMIN_PASSWORD"
YML
chmod 600 "$WORK/ci-vars.yml"

export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg
export ANSIBLE_HOST_KEY_CHECKING=False
export ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=120s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes"
export ANSIBLE_LOCAL_TEMP=$WORK/ansible-tmp
export ANSIBLE_NOCOLOR=1
export ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_CALLBACK_PLUGINS=$HERE/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_times
play() {  # play PLAYBOOK [ARGS...]: ansible-playbook with the test inventory and settings
    local book=$1; shift
    ansible-playbook -i "$WORK/hosts.ini" -e "@$WORK/ci-vars.yml" "$REPO/ansible/$book" "$@"
}
on() { local ip=$1; shift; ssh_t "$KEY" "$ip" "$@"; }

# --- static checks (ansible-lint runs beside the first playbook run) ------------------
check "syntax-check" play deploy.yml --syntax-check
(cd "$REPO/ansible" && ansible-lint --offline -q deploy.yml backup.yml restore.yml) \
    >"$WORK/lint.log" 2>&1 &
LINT_PID=$!

deploy_checks          # three runs of deploy.yml (first, idempotent, certificate renewal)
check "ansible-lint" wait "$LINT_PID"
cat "$WORK/lint.log" >>"$WORK/checks.log"
tls_checks             # nginx in front of the coordinator and pi1
flower_checks          # cases on both Pis, an HTTP update from pi1, a Flower round via pi2
backup_checks          # backup.yml, then restore.yml on a wiped coordinator and a new pi1

SUMMARY_DONE=1
[ "$FAILED" -eq 0 ]
