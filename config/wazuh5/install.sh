#!/bin/sh
# Installs the wazuh-misp integration (this directory) into a Wazuh 5
# indexer through its Content Manager API: the integration, its decoder
# and its rules in the draft space, then promoted draft -> test -> custom,
# where the engine loads the decoder and the detectors evaluate the rules.
#
#   MISP_URL=https://misp.example.org INDEXER_USER=admin \
#     sh /usr/share/wazuh-misp/wazuh5/install.sh
#
# Environment:
#   MISP_URL       your MISP's base URL, for the links in each finding (required)
#   INDEXER        the indexer's URL (default https://localhost:9200)
#   INDEXER_USER   a user allowed to manage content (default admin); the
#                  password is asked for by curl, or INDEXER_PASSWORD
#   CURL_CA        CA bundle for the indexer's certificate (default: curl's)
#
# Needs curl and python3 with PyYAML (Debian: python3-yaml): the Content
# Manager takes decoders as YAML but integrations and rules as JSON.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${MISP_URL:?set MISP_URL to your MISP base URL}"
INDEXER=${INDEXER:-https://localhost:9200}
INDEXER_USER=${INDEXER_USER:-admin}
api="$INDEXER/_plugins/_content_manager"

auth="$INDEXER_USER"
if [ -n "${INDEXER_PASSWORD:-}" ]; then auth="$INDEXER_USER:$INDEXER_PASSWORD"; fi
ca=""
if [ -n "${CURL_CA:-}" ]; then ca="--cacert $CURL_CA"; fi

# call METHOD PATH CONTENT-TYPE < body: prints the response, fails on >= 400.
call() {
    # shellcheck disable=SC2086
    curl -sS --fail-with-body $ca -u "$auth" -X "$1" "$api$2" -H "Content-Type: $3" --data-binary @-
}


# envelope YAML-FILE [INTEGRATION-ID]: {"integration": id, "resource": <file>} as JSON.
envelope() {
    python3 - "$1" "${2:-}" <<'PY'
import json, sys, yaml
resource = yaml.safe_load(open(sys.argv[1]))
body = {"resource": resource}
if sys.argv[2]:
    body["integration"] = sys.argv[2]
print(json.dumps(body))
PY
}

message() { python3 -c 'import sys, json; print(json.load(sys.stdin)["message"])'; }

echo "integration wazuh-misp"
integration=$(envelope "$here/integration.yml" | call POST /integrations application/json | message)
echo "  id $integration"

for d in "$here"/decoders/*.yml; do
    echo "decoder $(basename "$d")"
    # The Content Manager takes a decoder as YAML, in the same envelope.
    {
        printf 'integration: %s\nresource:\n' "$integration"
        sed "s|MISP_URL: https://misp.example.org|MISP_URL: $MISP_URL|; s/^/  /" "$d"
    } | call POST /decoders application/yaml > /dev/null
done

for r in "$here"/rules/*.yml; do
    echo "rule $(basename "$r")"
    envelope "$r" "$integration" | call POST /rules application/json > /dev/null
done

# Draft -> test (the engine validates the decoder), then test -> custom.
for space in draft test; do
    echo "promoting $space"
    # shellcheck disable=SC2086
    changes=$(curl -sS --fail-with-body $ca -u "$auth" "$api/promote?space=$space")
    printf '%s' "$changes" | python3 -c '
import json, sys
print(json.dumps({"space": sys.argv[1], "changes": json.load(sys.stdin)["changes"]}))' "$space" \
        | call POST /promote application/json > /dev/null
done
echo "done: wazuh-misp decodes in the custom space; its rules can be assigned to detectors"
