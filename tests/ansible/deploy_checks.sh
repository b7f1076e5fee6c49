# deploy.yml three times: a first run, a second that changes nothing, and a third on
# the coordinator whose server certificate is within its renewal window. Sourced by
# run_e2e.sh (uses its check, play, on, KEY, WORK and the targets' addresses).
# shellcheck shell=bash

play_to() {  # play_to LOG PLAYBOOK [ARGS...]: a playbook run, its output in LOG
    local log=$1; shift
    play "$@" >"$log" 2>&1
}

recap_zero() {  # recap_zero LOG HOSTS: every host of the run's recap has changed=0
    local log=$1 want=$2 hosts
    hosts=$(sed -n '/PLAY RECAP/,$p' "$log" | grep -cE 'ok=[0-9]+ +changed=' || true)
    [ "$hosts" -eq "$want" ] || { echo "expected $want hosts in the recap, got $hosts"; return 1; }
    ! sed -n '/PLAY RECAP/,$p' "$log" | grep -E 'ok=' | grep -vE 'changed=0 .*unreachable=0 +failed=0'
}

device_token() {  # pi1's coordinator token, read on pi1
    on "$PI_IP" "sudo sed -n 's/^device_token = \"\\(.*\\)\"$/\\1/p' /etc/neuroedge/device.toml"
}

coordinator_get() {  # coordinator_get PATH [CURL ARGS...]: as pi1, through nginx
    local path=$1; shift
    on "$PI_IP" "sudo curl -sS --fail-with-body --cacert /etc/neuroedge/coordinator-ca.crt \
        -H 'Authorization: Bearer $(device_token)' $* https://$COORD_IP:8443$path"
}

wrong_token_refused() {
    local code
    code=$(on "$PI_IP" "sudo curl -sS -o /dev/null -w '%{http_code}' --cacert /etc/neuroedge/coordinator-ca.crt -H 'Authorization: Bearer not-a-token' https://$COORD_IP:8443/api/v1/bundles/latest")
    echo "HTTP $code"; [ "$code" = 401 ]
}

same_signing_key() {
    local pi a b
    b=$(on "$COORD_IP" sudo cat /var/lib/neuroedge/coordinator/signing.key.pub)
    for pi in "$PI_IP" "$PI2_IP"; do
        a=$(on "$pi" sudo cat /etc/neuroedge/coordinator_signing.key.pub)
        [ -n "$a" ] && [ "$a" = "$b" ] && on "$pi" sudo grep -q coordinator_signing.key.pub /etc/neuroedge/device.toml || return 1
    done
}

one_admin() {  # one_admin IP
    on "$1" "sudo -u neuroedge /opt/neuroedge/venv/bin/python -c 'from pathlib import Path; from device.config import load_settings; from device.services import open_stores; s, a = open_stores(load_settings(Path(\"/etc/neuroedge/device.toml\"))); assert a.count_users() == 1'"
}

firewall_loaded() {
    on "$PI_IP" sudo nft list table inet neuroedge | grep 'dport 443 ' >/dev/null \
        && on "$PI2_IP" sudo nft list table inet neuroedge | grep 'dport 8080 ' >/dev/null \
        && on "$COORD_IP" sudo nft list table inet neuroedge | grep -E 'dport \{ 8443, 9092 \}' >/dev/null
}

outside_blocked() {  # from $SUBNET.200 (not in the clinic network) nothing answers
    ! curl -sS --max-time 2 -k --interface "$SUBNET.200" "https://$PI_IP/healthz" \
        && ! curl -sS --max-time 2 --interface "$SUBNET.200" "http://$PI2_IP:8080/healthz" \
        && ! curl -sS --max-time 2 -k --interface "$SUBNET.200" "https://$COORD_IP:8443/healthz"
}

private_files() {
    [ "$(on "$PI_IP" sudo stat -c %a:%U:%G /etc/neuroedge/device.toml)" = 640:root:neuroedge ] \
        && [ "$(on "$COORD_IP" sudo stat -c %a /var/lib/neuroedge/coordinator/enrolment/pi1.token)" = 600 ] \
        && [ "$(on "$COORD_IP" sudo stat -c %a:%U /etc/neuroedge/pki/server.key)" = 600:root ]
}

key_sums() {
    on "$COORD_IP" sudo sha256sum /var/lib/neuroedge/coordinator/signing.key \
        /var/lib/neuroedge/coordinator/enrolment/pi1.token /etc/neuroedge/pki/ca.key 2>&1 || true
    on "$PI2_IP" sudo sha256sum /etc/neuroedge/flower/supernode.key 2>&1 || true
}

served_cert_is() {  # served_cert_is FINGERPRINT: nginx serves it (after its reload)
    local served
    for _ in $(seq 30); do
        served=$(openssl s_client -connect "$COORD_IP:8443" </dev/null 2>/dev/null \
            | openssl x509 -noout -fingerprint 2>/dev/null || true)
        [ "$served" = "$1" ] && return 0
        sleep 1
    done
    echo "served: $served, file: $1"; return 1
}

deploy_checks() {
    local t cert1 cert2 sums1
    t=$SECONDS
    log "first run"
    check "first run succeeds" play_to "$WORK/run1.log" deploy.yml
    log "first run: $((SECONDS - t)) s"
    sed -n '/PLAY RECAP/,$p' "$WORK/run1.log" >&2
    on "$COORD_IP" sudo cat /etc/neuroedge/pki/ca.crt >"$WORK/ca.crt"
    check "coordinator, SuperLink and nginx active" on "$COORD_IP" \
        systemctl is-active neuroedge-coordinator flower-superlink nginx
    check "pi1's appliance and nginx active" on "$PI_IP" systemctl is-active neuroedge-device nginx
    check "pi2's appliance and SuperNode active" on "$PI2_IP" \
        systemctl is-active neuroedge-device flower-supernode
    check "pi1 /healthz from the host over HTTPS (fleet CA)" \
        curl -fsS --max-time 10 --cacert "$WORK/ca.crt" "https://$PI_IP/healthz"
    check "pi2 /healthz from the host (plain HTTP)" curl -fsS --max-time 10 "http://$PI2_IP:8080/healthz"
    check "pi1 reaches the coordinator over TLS with its token" coordinator_get /api/v1/bundles/latest
    check "coordinator refuses a wrong token (401)" wrong_token_refused
    check "devices trust the coordinator's signing key" same_signing_key
    check "first administrator created on pi1" one_admin "$PI_IP"
    check "first administrator created on pi2" one_admin "$PI2_IP"
    check "firewall table loaded on every host" firewall_loaded
    check "firewall: service ports closed outside the clinic network" outside_blocked
    check "configuration, tokens and keys are private" private_files
    sums1=$(key_sums)

    t=$SECONDS
    log "second run"
    check "second run succeeds" play_to "$WORK/run2.log" deploy.yml
    log "second run: $((SECONDS - t)) s"
    sed -n '/PLAY RECAP/,$p' "$WORK/run2.log" >&2
    check "second run: changed=0 on every host" recap_zero "$WORK/run2.log" 3
    check "signing, CA and node keys and the token unchanged by the second run" \
        test "$sums1" = "$(key_sums)"

    cert1=$(on "$COORD_IP" sudo openssl x509 -noout -fingerprint -in /etc/neuroedge/pki/server.crt)
    t=$SECONDS
    log "third run (coordinator, certificates only, renewal window longer than their life)"
    check "third run succeeds" play_to "$WORK/run3.log" deploy.yml \
        --limit coordinator --tags tls -e coordinator_tls_renew_days=3650
    log "third run: $((SECONDS - t)) s"
    cert2=$(on "$COORD_IP" sudo openssl x509 -noout -fingerprint -in /etc/neuroedge/pki/server.crt)
    check "server certificate re-issued" test "$cert1" != "$cert2"
    check "nginx serves the re-issued certificate" served_cert_is "$cert2"
    check "pi1 still reaches the coordinator over TLS (same CA)" coordinator_get /healthz --retry 15 --retry-delay 1 --retry-all-errors
}
