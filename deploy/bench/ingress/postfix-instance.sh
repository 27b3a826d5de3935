#!/usr/bin/env bash
# A private, throw-away Postfix instance on loopback, for the ingress interop
# test (Postfix relaying to Tern) and the ingress benchmark (Postfix as the
# peer receiver). Needs root (Postfix's master runs as root) and Debian's
# `postfix` package; never touches /etc/postfix.
#
#   postfix-instance.sh start DIR SMTPD_PORT [RELAYHOST_PORT]
#       SMTPD_PORT       smtpd listens on 127.0.0.1:SMTPD_PORT, relaying for
#                        127.0.0.0/8 only
#       RELAYHOST_PORT   relay everything to [127.0.0.1]:RELAYHOST_PORT
#                        (Tern); without it, accepted mail is discarded
#                        after it was queued (the benchmark's receiver)
#   postfix-instance.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
case "$cmd" in
stop)
  [ -f "$dir/main.cf" ] && postfix -c "$dir" stop >/dev/null 2>&1 || true
  exit 0
  ;;
start) ;;
*) echo "usage: $0 start DIR PORT [RELAYHOST_PORT] | stop DIR" >&2; exit 2 ;;
esac
port=${3:?smtpd port}
relay_port=${4:-}
[ "$(id -u)" = 0 ] || { echo "postfix-instance.sh: must run as root" >&2; exit 1; }
command -v postfix >/dev/null || { echo "postfix not installed (scripts/deps.sh --test)" >&2; exit 1; }
mkdir -p "$dir/queue" "$dir/data"
chown postfix "$dir/data"
if [ -n "$relay_port" ]; then
  transport="relayhost = [127.0.0.1]:$relay_port
smtp_tls_security_level = may"
else
  transport="default_transport = discard:benchmark
relay_transport = discard:benchmark"
fi
cat > "$dir/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test
mydomain = relay.test
myorigin = relay.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 1000
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 200
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
biff = no
$transport
CF
cat > "$dir/master.cf" <<CF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
CF
postfix -c "$dir" check >/dev/null 2>&1 || postfix -c "$dir" set-permissions >/dev/null 2>&1 || true
postfix -c "$dir" start
