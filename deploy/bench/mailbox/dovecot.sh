# Shell helpers for running Debian's Dovecot as the IMAP peer, shared by
# deploy/bench/mailbox/bench.sh and deploy/compliance/imaptest.sh (sourced,
# not run). Loopback only; /etc/dovecot is not touched. Expects the array
# `pids` (processes to stop on exit) to be set.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something accepts on 127.0.0.1:PORT, at most 30 s.
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}

# start_dovecot DIR PORT LOG: a throwaway Dovecot under DIR (Maildir per
# user, users from DIR/passwd, which the caller writes) serving plain IMAP on
# 127.0.0.1:PORT, logging to LOG (stderr to LOG.stderr). Sets dovecot_pid
# and returns once it accepts connections.
start_dovecot() {
  local d=$1 port=$2 log=$3
  mkdir -p "$d/run" "$d/mail"
  chown dovecot:dovecot "$d/mail"
  cat > "$d/dovecot.conf" <<CONF
protocols = imap
listen = 127.0.0.1
base_dir = $d/run
state_dir = $d/run
log_path = $log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 100
mail_location = maildir:$d/mail/%u
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=$d/mail/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
protocol imap {
  mail_max_userip_connections = 100
}
service stats {
  unix_listener stats-reader {
    mode = 0666
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
CONF
  dovecot -F -c "$d/dovecot.conf" 2>"$log.stderr" &
  dovecot_pid=$!
  pids+=("$dovecot_pid")
  wait_port "$port"
}
