# Cases on both Pis through their JSON API, an HTTP update from pi1 (its token, through
# nginx), then one Flower round: neuroedge-flower-round on the coordinator, through the
# SuperLink and pi2's SuperNode, closing the round that holds pi1's update. Sourced by
# run_e2e.sh after tls_checks.
# shellcheck shell=bash

CASES_PER_CLASS=10

api_token() {  # api_token IP: a new administrator's API token on that appliance
    on "$1" "sudo -u neuroedge /opt/neuroedge/venv/bin/neuroedge-device token create \
        e2e-$RANDOM --user admin --config /etc/neuroedge/device.toml 2>/dev/null" | tail -n 1
}

add_cases() {  # add_cases URL TOKEN OUT: CASES_PER_CLASS confirmed cases of each class
    local url=$1 token=$2 out=$3 label name f answer id added
    for label in tumour no_tumour; do
        [ "$label" = tumour ] && name=yes || name=no
        added=0
        for f in "$SLICES/$name"/*; do
            answer=$(curl -sS --cacert "$WORK/ca.crt" -H "Authorization: Bearer $token" \
                -F "image=@$f" "$url/api/v1/predictions") || return 1
            id=$(python3 -c 'import json, sys; print(json.load(sys.stdin).get("case_id", ""))' \
                <<<"$answer")
            [ -n "$id" ] || continue          # a slice the appliance refuses (e.g. colour)
            curl -fsS --cacert "$WORK/ca.crt" -H "Authorization: Bearer $token" \
                -H 'Content-Type: application/json' -d "{\"label\": \"$label\"}" \
                "$url/api/v1/cases/$id/label" >/dev/null || return 1
            echo "$id $label" >>"$out"
            added=$((added + 1))
            [ "$added" -lt "$CASES_PER_CLASS" ] || break
        done
        [ "$added" -eq "$CASES_PER_CLASS" ] || { echo "only $added $label cases"; return 1; }
    done
}

http_update_from_pi1() {  # train on pi1 and send the update: a round opens with it
    local trained
    trained=$(curl -fsS --cacert "$WORK/ca.crt" -X POST -H "Authorization: Bearer $PI1_TOKEN" \
        "https://$PI_IP/api/v1/federation/train") || return 1
    echo "train: $trained"
    grep -q '"action": *"queued"' <<<"$trained" || return 1
    curl -fsS --cacert "$WORK/ca.crt" -X POST -H "Authorization: Bearer $PI1_TOKEN" \
        "https://$PI_IP/api/v1/federation/sync" || return 1
    coordinator_get /api/v1/rounds | python3 -c 'import json, sys
rounds = json.load(sys.stdin)["rounds"]
assert [(r["status"], r["updates"]) for r in rounds] == [("open", 1)], rounds'
}

flower_round_events() {  # the flower_round audit events, as JSON, read on the coordinator
    on "$COORD_IP" "sudo -u neuroedge /opt/neuroedge/venv/bin/python -c 'import json
from pathlib import Path
from coordinator.store.sqlite import SQLiteCoordinatorStore
store = SQLiteCoordinatorStore(Path(\"/var/lib/neuroedge/coordinator\"))
print(json.dumps([e.detail for e in store.audit_events(kind=\"flower_round\")]))
store.close()'"
}

flower_round_closed_both() {  # pi2's Flower update and pi1's HTTP update, one round
    local events rounds
    events=$(flower_round_events) && rounds=$(coordinator_get /api/v1/rounds) || return 1
    python3 -c 'import json, sys
events, rounds = json.loads(sys.argv[1]), json.loads(sys.argv[2])["rounds"]
assert len(events) == 1, events
sites = {s.get("device_id"): s for s in events[0]["sites"]}
assert sites["pi2"]["update"]["round"] == events[0]["coordinator_round"], sites
closed = [r for r in rounds if r["round"] == events[0]["coordinator_round"]]
assert [(r["status"], r["updates"]) for r in closed] == [("closed", 2)], rounds
assert closed[0]["reason"].startswith("outcome:"), closed
print("Flower round", events[0]["round"], "closed coordinator round",
      closed[0]["round"], "with", closed[0]["updates"], "updates:", closed[0]["reason"])' \
        "$events" "$rounds"
}

flower_checks() {
    local t
    PI1_TOKEN=$(api_token "$PI_IP")
    PI2_TOKEN=$(api_token "$PI2_IP")
    : >"$WORK/pi1.cases"; : >"$WORK/pi2.cases"
    t=$SECONDS
    check "pi1: $((2 * CASES_PER_CLASS)) cases uploaded and labelled over HTTPS" \
        add_cases "https://$PI_IP" "$PI1_TOKEN" "$WORK/pi1.cases"
    check "pi2: $((2 * CASES_PER_CLASS)) cases uploaded and labelled" \
        add_cases "http://$PI2_IP:8080" "$PI2_TOKEN" "$WORK/pi2.cases"
    log "cases: $((SECONDS - t)) s"
    check "pi1 trains and sends its update over HTTPS: a round opens" http_update_from_pi1
    t=$SECONDS
    check "one Flower round: neuroedge-flower-round through the SuperLink and pi2's SuperNode" \
        on "$COORD_IP" sudo systemctl start neuroedge-flower-round
    log "Flower round: $((SECONDS - t)) s"
    check "the Flower round closed the round with pi2's and pi1's updates" flower_round_closed_both
    grep -h "^Flower round" "$WORK/checks.log" | tail -n 1 >&2
}
