# backup.yml while everything runs; then the coordinator loses its state and CA and is
# restored in place, and pi1 is replaced by a fresh target (a new SD card: deploy.yml,
# then restore.yml). Every case, label and round must be back. Sourced by run_e2e.sh
# after flower_checks.
# shellcheck shell=bash

case_digest() {  # case_digest IP: id, confirmed label and image SHA-256 of every case
    on "$1" "sudo -u neuroedge /opt/neuroedge/venv/bin/python -c 'import hashlib
from pathlib import Path
from device.config import load_settings
from device.services import open_stores
store, accounts = open_stores(load_settings(Path(\"/etc/neuroedge/device.toml\")))
for case in sorted(store.list(limit=1000), key=lambda c: c.id):
    image = hashlib.sha256(store.image_path(case).read_bytes()).hexdigest()
    print(case.id, case.confirmed_label, image)
accounts.close(); store.close()'"
}

archives_fetched() {
    local host
    for host in coord pi1 pi2; do
        compgen -G "$WORK/backups/$host/$host-*.tar" >/dev/null || { echo "no archive of $host"; return 1; }
    done
}

archive_of() { compgen -G "$WORK/backups/$1/$1-*.tar" | head -n 1; }

lose_coordinator_state() {  # the state disk dies: state folder and CA gone
    on "$COORD_IP" "sudo systemctl stop neuroedge-coordinator flower-superlink \
        && sudo rm -rf /var/lib/neuroedge/coordinator /etc/neuroedge/pki"
}

same_rounds() {  # same_rounds FILE: the coordinator's rounds now equal those in FILE
    local now
    now=$(coordinator_get /api/v1/rounds --retry 15 --retry-delay 1 --retry-all-errors) || return 1
    [ "$now" = "$(cat "$1")" ] || { echo "before: $(cat "$1")"; echo "after: $now"; return 1; }
    [ "$(flower_round_events | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')" = 1 ]
}

fresh_pi1() {  # a replacement pi1 (same name and address), provisioned by deploy.yml
    target_replace "$P" pi1 "$ROOTFS" "$TARGETS" "$KEY.pub"
    wait_ssh "$KEY" "$PI_IP" || return 1
    # New SSH connections: the old ones' multiplexing masters talk to a dead machine.
    export ANSIBLE_SSH_CONTROL_PATH_DIR=$WORK/ssh-new
    play_to "$WORK/run-new-pi1.log" deploy.yml --limit pi1 && [ -z "$(case_digest "$PI_IP")" ]
}

same_cases() { diff "$WORK/pi1.digest" <(case_digest "$PI_IP"); }

second_flower_round() {  # the restored SuperLink knows pi2's node: its update is taken
    on "$COORD_IP" sudo systemctl start neuroedge-flower-round || return 1
    flower_round_events | python3 -c 'import json, sys
events = json.load(sys.stdin)
assert len(events) == 2, events
sites = {s.get("device_id"): s for s in events[0]["sites"]}  # newest first
assert "round" in sites["pi2"].get("update", {}), sites'
}

old_token_labels_a_case() {  # the restored accounts: pi1's API token from before works
    local id label
    read -r id label <"$WORK/pi1.cases"
    curl -fsS --cacert "$WORK/ca.crt" -H "Authorization: Bearer $PI1_TOKEN" \
        -H 'Content-Type: application/json' -d "{\"label\": \"$label\"}" \
        "https://$PI_IP/api/v1/cases/$id/label"
}

backup_checks() {
    local t
    case_digest "$PI_IP" >"$WORK/pi1.digest"
    coordinator_get /api/v1/rounds >"$WORK/rounds.json"
    check "pi1's digest holds every case with its label" \
        test "$(wc -l <"$WORK/pi1.digest")" -eq "$(wc -l <"$WORK/pi1.cases")"
    t=$SECONDS
    check "backup.yml succeeds with every service running" \
        play_to "$WORK/backup.log" backup.yml -e "backup_dir=$WORK/backups"
    log "backup: $((SECONDS - t)) s"
    check "backup.yml fetched an archive of each host" archives_fetched

    t=$SECONDS
    check "coordinator: state folder and CA lost" lose_coordinator_state
    check "restore.yml puts the coordinator back" \
        play_to "$WORK/restore-coord.log" restore.yml --limit coord -e "backup_archive=$(archive_of coord)"
    check "restored coordinator: every round, the Flower round's record, pi1's token" \
        same_rounds "$WORK/rounds.json"
    check "restored coordinator serves its own certificate again" \
        curl -fsS --max-time 10 --cacert "$WORK/ca.crt" "https://$COORD_IP:8443/healthz"
    check "restored SuperLink: a second Flower round takes pi2's update (same node)" \
        second_flower_round
    log "coordinator restore: $((SECONDS - t)) s"

    t=$SECONDS
    check "a fresh pi1 (new target, deploy.yml --limit pi1) starts without cases" fresh_pi1
    log "fresh pi1: $((SECONDS - t)) s"
    t=$SECONDS
    check "restore.yml puts pi1's backup onto the fresh target" \
        play_to "$WORK/restore-pi1.log" restore.yml --limit pi1 -e "backup_archive=$(archive_of pi1)"
    check "restored pi1: every case, label and image" same_cases
    check "restored pi1: its accounts and API tokens (a label through HTTPS)" old_token_labels_a_case
    log "pi1 restore: $((SECONDS - t)) s"
}
