# The install guide's packages, and the Python modules of the web UI and the agent from Debian
# (bookworm forbids a system-wide pip install; werkzeug 2.2 still reads the sha256$ hashes).

# A mirror caught in the middle of a sync serves indexes that disagree with its Release file
# ("File has unexpected size ... Mirror sync in progress?"): wait and try again.
for attempt in 1 2 3 4; do
  if apt-get update -q >/run/apt-update.log 2>&1; then cat /run/apt-update.log; break; fi
  cat /run/apt-update.log
  if [ "$attempt" = 4 ] || ! grep -qE 'Mirror sync in progress|unexpected size|Hash Sum mismatch' /run/apt-update.log; then exit 1; fi
  echo "apt-get update: the mirror is being synced; trying again in $((attempt * 20)) s"
  sleep $((attempt * 20))
done
apt-get install -y -q --no-install-recommends \
  dnsmasq git sqlite3 nfs-kernel-server python3-pip pv snmp vim iptables rsyslog parted rsync \
  openssh-server openssh-client ca-certificates \
  python3-flask python3-flask-login python3-sqlalchemy python3-cryptography python3-paramiko \
  python3-influxdb python3-requests
