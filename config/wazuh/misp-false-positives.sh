#!/bin/sh
# Applies a Wazuh CDB list of false positives to wazuh-misp, so that SOC
# analysts can mark them from the Wazuh dashboard (Server management >
# CDB lists > misp-false-positives). Each line is VALUE:REASON (a value
# with a colon, such as an IPv6 address or a URL, in double quotes:
# "2001:db8::1":our scanner). Run by a <wodle name="command"> on the
# manager (README, "False positives"); marking a value already marked is a
# no-op, so it can run every minute.
#
# Environment: WAZUH_MISP_LIST, WAZUH_MISP_CONFIG, WAZUH_MISP_BIN, and
# WAZUH_MISP_USER (the daemon's user, which the command runs as; empty:
# as whoever runs this).
set -u
LIST=${WAZUH_MISP_LIST:-/var/ossec/etc/lists/misp-false-positives}
CONFIG=${WAZUH_MISP_CONFIG:-/etc/wazuh-misp/wazuh-misp.toml}
BIN=${WAZUH_MISP_BIN:-/usr/bin/wazuh-misp}
USER_NAME=${WAZUH_MISP_USER-wazuh}
[ -f "$LIST" ] || exit 0
status=0
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    case "$line" in
    \"*)
        value=${line#\"}
        value=${value%%\"*}
        reason=${line#\""$value"\"}
        ;;
    *:*)
        value=${line%%:*}
        reason=${line#*:}
        ;;
    *)
        value=$line
        reason=
        ;;
    esac
    reason=${reason#:}
    reason=${reason#\"}
    reason=${reason%\"}
    if [ -n "$USER_NAME" ]; then
        set -- runuser -u "$USER_NAME" -- "$BIN"
    else
        set -- "$BIN"
    fi
    if ! "$@" false-positive --config "$CONFIG" ${reason:+--reason "$reason"} "$value" >/dev/null; then
        echo "misp-false-positives: cannot mark $value" >&2
        status=1
    fi
done <"$LIST"
exit $status
