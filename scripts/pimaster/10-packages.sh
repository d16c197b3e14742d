# The install guide's packages, and the Python modules of the web UI and the agent from Debian
# (bookworm forbids a system-wide pip install; werkzeug 2.2 still reads the sha256$ hashes).

"$BUILD_STAGING/bin/apt-update"
apt-get install -y -q --no-install-recommends \
  dnsmasq git sqlite3 nfs-kernel-server python3-pip pv snmp vim iptables rsyslog parted rsync \
  openssh-server openssh-client ca-certificates \
  python3-flask python3-flask-login python3-sqlalchemy python3-cryptography python3-paramiko \
  python3-influxdb python3-requests
