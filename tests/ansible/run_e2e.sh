#!/usr/bin/env bash
# End-to-end test of ansible/deploy.yml: syntax check, ansible-lint, then two real runs
# against one Raspberry-Pi-like target and one coordinator target (Debian 12 booted with
# systemd-nspawn, systemd as PID 1, reached over real SSH as "pi" with passwordless sudo),
# installing from a wheelhouse so that the targets need no internet.
#
#   sudo tests/ansible/run_e2e.sh          # root, Debian 12 host, ~2 cores
#
# Caches (never required, rebuilt when missing) under $NEUROEDGE_CI_CACHE
# (/var/cache/neuroedge-ci): the Debian rootfs tarball, the ansible venv, the wheelhouse.
# Prints "ansible-e2e: N passed, M failed" last; exits non-zero when M > 0.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${NEUROEDGE_CI_CACHE:-/var/cache/neuroedge-ci}
SUBNET=${NEUROEDGE_E2E_SUBNET:-10.250.77}     # our own /24, only inside our namespaces
ANSIBLE_CORE_PIN=${ANSIBLE_CORE_PIN:-ansible-core==2.17.14}
ANSIBLE_LINT_PIN=${ANSIBLE_LINT_PIN:-ansible-lint==26.6.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# shellcheck source=tests/ansible/lib.sh
source "$HERE/lib.sh"

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
T0=$SECONDS
mkdir -p "$CACHE"
WORK=$(mktemp -d /var/tmp/neuroedge-e2e.XXXXXX)
P=nx$(printf '%04x' $((RANDOM % 65536)))
KEEP=${NEUROEDGE_E2E_KEEP:-0}
SUMMARY_DONE=0
finish() {
    local rc=$?
    teardown
    if [ "$SUMMARY_DONE" = 0 ]; then   # aborted before the end: count it, still summarise
        FAILED=$((FAILED + 1))
        log "FAIL aborted (exit $rc) before all checks ran"
        echo "ansible-e2e: $PASSED passed, $FAILED failed"
        [ "$rc" -ne 0 ] || rc=1
    fi
    if [ "$KEEP" = 1 ] || [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
        # keep logs, drop the (large) root filesystems
        rm -rf "$WORK/coord" "$WORK/pi1"
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

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
if ip -br addr | grep -q " $SUBNET\."; then
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
ensure_rootfs "$CACHE/rootfs-bookworm.tar"
ssh-keygen -q -t ed25519 -N '' -C neuroedge-e2e -f "$WORK/id_ed25519"
KEY=$WORK/id_ed25519
COORD_IP=$SUBNET.10
PI_IP=$SUBNET.11
lan_up "$P" "$SUBNET"
# A second host address outside the "clinic network" ($SUBNET.0/25) for the firewall check.
ip addr add "$SUBNET.200/24" dev "${P}h"
target_create "$P" coord "$COORD_IP" "$CACHE/rootfs-bookworm.tar" "$WORK" "$KEY.pub"
target_create "$P" pi1 "$PI_IP" "$CACHE/rootfs-bookworm.tar" "$WORK" "$KEY.pub"
target_boot "$P" coord "$WORK"
target_boot "$P" pi1 "$WORK"
for t in "coord=$COORD_IP" "pi1=$PI_IP"; do
    wait_ssh "$KEY" "${t#*=}" \
        || { log "target ${t%%=*}: no SSH after 90 s (console: $WORK/${t%%=*}.console.log)"; exit 1; }
done
log "targets up: $((SECONDS - T)) s"

cat >"$WORK/hosts.ini" <<INI
[pis]
pi1 ansible_host=$PI_IP

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
edge_device_serial: 1
edge_device_admin_password: "$ADMIN_PASSWORD"
YML
chmod 600 "$WORK/ci-vars.yml"

export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg
export ANSIBLE_HOST_KEY_CHECKING=False
export ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=120s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes"
export ANSIBLE_LOCAL_TEMP=$WORK/ansible-tmp
export ANSIBLE_NOCOLOR=1
export ANSIBLE_RETRY_FILES_ENABLED=0
PLAY=(ansible-playbook -i "$WORK/hosts.ini" -e "@$WORK/ci-vars.yml" "$REPO/ansible/deploy.yml")

# --- static checks ------------------------------------------------------------------
check "syntax-check" "${PLAY[@]}" --syntax-check
check "ansible-lint" bash -c "cd '$REPO/ansible' && ansible-lint --offline -q deploy.yml"

# --- first run ----------------------------------------------------------------------
T=$SECONDS
log "first run"
check "first run succeeds" bash -c "$(printf '%q ' "${PLAY[@]}") >'$WORK/run1.log' 2>&1"
log "first run: $((SECONDS - T)) s"
tail -n 6 "$WORK/run1.log" >&2

on() { local ip=$1; shift; ssh_t "$KEY" "$ip" "$@"; }
check "coordinator service active" on "$COORD_IP" systemctl is-active neuroedge-coordinator
check "device service active" on "$PI_IP" systemctl is-active neuroedge-device
check "Pi /healthz from the host" curl -fsS --max-time 10 "http://$PI_IP:8080/healthz"
# shellcheck disable=SC2016  # the script runs on the Pi: $tok expands there
check "Pi reaches the coordinator over TLS with its token" on "$PI_IP" 'sudo sh -c '\''
    tok=$(sed -n "s/^device_token = \"\(.*\)\"$/\1/p" /etc/neuroedge/device.toml)
    code=$(curl -sS -o /dev/null -w "%{http_code}" --cacert /etc/neuroedge/coordinator-ca.crt \
        -H "Authorization: Bearer $tok" https://'"$COORD_IP"':8443/api/v1/bundles/latest)
    echo "HTTP $code"; [ "$code" = 200 ]'\'
wrong_token_refused() {
    local code
    code=$(on "$PI_IP" "sudo curl -sS -o /dev/null -w '%{http_code}' --cacert /etc/neuroedge/coordinator-ca.crt -H 'Authorization: Bearer not-a-token' https://$COORD_IP:8443/api/v1/bundles/latest")
    echo "HTTP $code"; [ "$code" = 401 ]
}
check "coordinator refuses a wrong token (401)" wrong_token_refused
same_signing_key() {
    local a b
    a=$(on "$PI_IP" sudo cat /etc/neuroedge/coordinator_signing.key.pub)
    b=$(on "$COORD_IP" sudo cat /var/lib/neuroedge/coordinator/signing.key.pub)
    [ -n "$a" ] && [ "$a" = "$b" ] && on "$PI_IP" sudo grep -q coordinator_signing.key.pub /etc/neuroedge/device.toml
}
check "device trusts the coordinator's signing key" same_signing_key
check "first administrator created" on "$PI_IP" \
    "sudo -u neuroedge /opt/neuroedge/venv/bin/python -c 'from pathlib import Path; from device.config import load_settings; from device.services import open_stores; s, a = open_stores(load_settings(Path(\"/etc/neuroedge/device.toml\"))); assert a.count_users() == 1'"
check "firewall table loaded on both hosts" bash -c \
    "$(declare -f ssh_t); ssh_t '$KEY' $PI_IP sudo nft list table inet neuroedge | grep -q 'dport 8080' && ssh_t '$KEY' $COORD_IP sudo nft list table inet neuroedge | grep -q 'dport 8443'"
outside_blocked() {
    # from $SUBNET.200 (not in the clinic network) the appliance port must not answer
    ! curl -sS --max-time 4 --interface "$SUBNET.200" "http://$PI_IP:8080/healthz"
}
check "firewall: appliance port closed outside the clinic network" outside_blocked
check "device config and token file are private" bash -c \
    "$(declare -f ssh_t); [ \"\$(ssh_t '$KEY' $PI_IP sudo stat -c %a:%U:%G /etc/neuroedge/device.toml)\" = 640:root:neuroedge ] && [ \"\$(ssh_t '$KEY' $COORD_IP sudo stat -c %a /var/lib/neuroedge/coordinator/enrolment/pi1.token)\" = 600 ]"
KEYSUM1=$(on "$COORD_IP" sudo sha256sum /var/lib/neuroedge/coordinator/signing.key /var/lib/neuroedge/coordinator/enrolment/pi1.token /etc/neuroedge/pki/ca.key 2>&1 || true)

# --- second run: idempotent ---------------------------------------------------------
T=$SECONDS
log "second run"
check "second run succeeds" bash -c "$(printf '%q ' "${PLAY[@]}") >'$WORK/run2.log' 2>&1"
log "second run: $((SECONDS - T)) s"
sed -n '/PLAY RECAP/,$p' "$WORK/run2.log" >&2
recap_zero() {
    local log=$1 hosts
    hosts=$(sed -n '/PLAY RECAP/,$p' "$log" | grep -cE 'ok=[0-9]+ +changed=' || true)
    [ "$hosts" -eq 2 ] || { echo "expected 2 hosts in the recap, got $hosts"; return 1; }
    ! sed -n '/PLAY RECAP/,$p' "$log" | grep -E 'ok=' | grep -vE 'changed=0 .*unreachable=0 +failed=0'
}
check "second run: changed=0 on every host" recap_zero "$WORK/run2.log"
KEYSUM2=$(on "$COORD_IP" sudo sha256sum /var/lib/neuroedge/coordinator/signing.key /var/lib/neuroedge/coordinator/enrolment/pi1.token /etc/neuroedge/pki/ca.key 2>&1 || true)
check "signing key, CA key and token unchanged by the second run" test "$KEYSUM1" = "$KEYSUM2"
check "Pi /healthz after the second run" curl -fsS --max-time 10 "http://$PI_IP:8080/healthz"

# --- third run: a server certificate near its end is re-issued ------------------------
CERT1=$(on "$COORD_IP" sudo openssl x509 -noout -fingerprint -in /etc/neuroedge/pki/server.crt)
T=$SECONDS
log "third run (coordinator, renewal window longer than the certificate's life)"
check "third run succeeds" bash -c "$(printf '%q ' "${PLAY[@]}") --limit coordinator \
    -e coordinator_tls_renew_days=3650 >'$WORK/run3.log' 2>&1"
log "third run: $((SECONDS - T)) s"
CERT2=$(on "$COORD_IP" sudo openssl x509 -noout -fingerprint -in /etc/neuroedge/pki/server.crt)
check "server certificate re-issued" test "$CERT1" != "$CERT2"
served_cert_is_new() {  # the restarted coordinator serves the new one, not the file only
    local served
    for _ in $(seq 30); do
        served=$(openssl s_client -connect "$COORD_IP:8443" </dev/null 2>/dev/null \
            | openssl x509 -noout -fingerprint 2>/dev/null || true)
        [ "$served" = "$CERT2" ] && return 0
        sleep 1
    done
    echo "served: $served, file: $CERT2"; return 1
}
check "coordinator serves the re-issued certificate" served_cert_is_new
# shellcheck disable=SC2016  # the script runs on the Pi: $tok expands there
check "Pi still reaches the coordinator over TLS (same CA)" on "$PI_IP" 'sudo sh -c '\''
    tok=$(sed -n "s/^device_token = \"\(.*\)\"$/\1/p" /etc/neuroedge/device.toml)
    for i in $(seq 30); do
        code=$(curl -sS -o /dev/null -w "%{http_code}" --cacert /etc/neuroedge/coordinator-ca.crt \
            -H "Authorization: Bearer $tok" https://'"$COORD_IP"':8443/api/v1/bundles/latest)
        [ "$code" = 200 ] && break; sleep 1
    done
    echo "HTTP $code"; [ "$code" = 200 ]'\'

log "total: $((SECONDS - T0)) s"
SUMMARY_DONE=1
echo "ansible-e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
