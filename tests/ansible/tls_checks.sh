# nginx terminates TLS in front of the coordinator, its SuperLink's Fleet API and pi1;
# the Python servers listen on loopback only. Sourced by run_e2e.sh after deploy_checks.
# shellcheck shell=bash

links_on_https() {  # the bundle links nginx's clients get are https on the public port
    local body link
    body=$(coordinator_get /api/v1/bundles/latest) || return 1
    link=$(python3 -c 'import json, sys
files = json.load(sys.stdin)["files"]
bad = [u for u in files.values() if not u.startswith(sys.argv[1])]
assert files and not bad, bad
print(files["manifest.json"])' "https://$COORD_IP:8443/" <<<"$body") || return 1
    coordinator_get "${link#https://"$COORD_IP":8443}" | grep '"version"' >/dev/null
}

hsts_on_coordinator() {
    curl -sS -o /dev/null -D - --cacert "$WORK/ca.crt" "https://$COORD_IP:8443/healthz" \
        | grep -iE '^strict-transport-security: max-age=[1-9]'
}

listeners() {  # listeners IP PORT: the local addresses listening on PORT
    on "$1" ss -Hltn | awk -v p=":$2" '$4 ~ p"$" {print $4}' | sort -u | tr '\n' ' '
}

loopback_only() {
    local c s a
    c=$(listeners "$COORD_IP" 8444); s=$(listeners "$COORD_IP" 9093); a=$(listeners "$PI_IP" 8080)
    echo "coordinator: $c; SuperLink: $s; pi1's appliance: $a"
    [ "$c" = "127.0.0.1:8444 " ] && [ "$s" = "127.0.0.1:9093 " ] && [ "$a" = "127.0.0.1:8080 " ]
}

probe() {  # probe URL: /healthz under 1 s with 4 idle and 4 half-sent connections open
    python3 "$HERE/probe_idle.py" "$1" --cacert "$WORK/ca.crt" --idle 4 --limit 1.0
}

secure_cookie() {  # pi1 behind HTTPS: cookie_secure follows edge_device_https
    curl -sS -o /dev/null -D - --cacert "$WORK/ca.crt" "https://$PI_IP/login" \
        | grep -iE '^set-cookie:.*; Secure'
}

fleet_api_only() {  # the SuperLink's Control API (runs, node registration) stays local
    local control fleet
    control=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$WORK/ca.crt" \
        -X POST "https://$COORD_IP:9092/v1/control/list-runs")
    fleet=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$WORK/ca.crt" \
        "https://$COORD_IP:9092/v1/fleet/get-run")
    echo "control API: HTTP $control; fleet API (GET on a POST route): HTTP $fleet"
    [ "$control" = 404 ] && [ "$fleet" = 405 ]
}

body_limit() {  # nginx refuses a body over the coordinator's limit before it is read
    local code
    code=$(head -c 20000000 /dev/zero | curl -sS -o /dev/null -w '%{http_code}' \
        --cacert "$WORK/ca.crt" --data-binary @- "https://$COORD_IP:8443/api/v1/updates")
    echo "HTTP $code"; [ "$code" = 413 ]
}

tls_checks() {
    check "TLS through nginx: the coordinator's links stay on https" links_on_https
    check "HSTS on the coordinator" hsts_on_coordinator
    check "the Python servers and the SuperLink listen on loopback only" loopback_only
    check "idle connections: coordinator /healthz < 1 s (nginx)" probe "https://$COORD_IP:8443/healthz"
    check "idle connections: pi1 /healthz < 1 s (nginx)" probe "https://$PI_IP/healthz"
    check "idle connections: pi2 /healthz < 1 s (waitress alone)" probe "http://$PI2_IP:8080/healthz"
    grep -h "slowest of 3" "$WORK/checks.log" | tail -n 3 >&2
    check "pi1 over HTTPS sets Secure cookies" secure_cookie
    check "Flower: only the SuperLink's Fleet API is reachable" fleet_api_only
    check "a body over the coordinator's limit gets 413 from nginx" body_limit
}
