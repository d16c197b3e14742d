# The install guide's packages, and the Python modules of the web UI and the agent from Debian
# (bookworm forbids a system-wide pip install; werkzeug 2.2 still reads the sha256$ hashes).
# iputils-ping: the agent pings a switch before adding it and a node after powering it on
# (Raspberry Pi OS Lite has it; a release without it could add no switch).

"$BUILD_STAGING/bin/apt-update"
apt-get install -y -q --no-install-recommends \
  dnsmasq git sqlite3 nfs-kernel-server python3-pip pv snmp vim iptables rsyslog parted rsync iputils-ping \
  openssh-server openssh-client ca-certificates \
  python3-flask python3-flask-login python3-sqlalchemy python3-cryptography python3-paramiko \
  python3-influxdb python3-requests
