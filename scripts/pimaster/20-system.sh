# Host name, SSH, users, the static address (the way this image configures its network),
# services, wifi networks removed. (The first-boot resize is disarmed by the pipeline's shrink stage.)
files="$BUILD_STAGING/files"

echo "$BUILD_HOSTNAME" > /etc/hostname
if grep -q '^127\.0\.1\.1' /etc/hosts; then
  sed -i "s/^127\.0\.1\.1.*/127.0.1.1\t$BUILD_HOSTNAME/" /etc/hosts
else
  printf '127.0.1.1\t%s\n' "$BUILD_HOSTNAME" >> /etc/hosts
fi

# Root logs in by key only. With UsePAM no, a locked root ("!") is refused even with a valid key:
# "*" means no password at all, and not locked.
sed -i -E 's/^#?[[:space:]]*UsePAM[[:space:]].*/UsePAM no/' /etc/ssh/sshd_config
grep -q '^UsePAM no' /etc/ssh/sshd_config || echo 'UsePAM no' >> /etc/ssh/sshd_config
usermod -p '*' root
install -d -m 700 /root/.ssh
if [ -s "$files/authorized_keys" ]; then
  install -m 600 "$files/authorized_keys" /root/.ssh/authorized_keys
fi

# No default user, and so no known password.
if id pi >/dev/null 2>&1; then
  userdel --force --remove pi
fi
rm -f /etc/sudoers.d/010_pi-nopasswd

# Raspberry Pi OS asks at the first boot which user to rename (userconf-pi), and waits for an
# answer: the pimaster has no such user. Cancel the rename as cancel-rename does.
if [ -e /usr/lib/systemd/system/userconfig.service ] || [ -e /lib/systemd/system/userconfig.service ]; then
  systemctl disable userconfig.service
  systemctl enable getty@tty1.service
fi
rm -f /etc/ssh/sshd_config.d/rename_user.conf

# cloud-init (trixie) makes the release's default user at the first boot unless the boot
# partition's user-data names one (Raspberry Pi Imager's `user:`): none otherwise.
if [ -d /etc/cloud/cloud.cfg.d ]; then
  printf '# pimaster: no default user unless user-data names one (user:)\nusers: []\n' > /etc/cloud/cloud.cfg.d/90-pimaster.cfg
fi

# The static address on the cluster interface.
case "$BUILD_NETWORK" in
  NetworkManager)
    install -d -m 755 /etc/NetworkManager/system-connections
    cat > "/etc/NetworkManager/system-connections/pimaster-$BUILD_INTERFACE.nmconnection" <<NM
[connection]
id=pimaster-$BUILD_INTERFACE
type=ethernet
interface-name=$BUILD_INTERFACE
autoconnect=true
# Above any profile added for this interface later (cloud-init's have 120, Imager's DHCP none).
autoconnect-priority=999

[ipv4]
method=manual
address1=$BUILD_IP

[ipv6]
method=disabled
NM
    chmod 600 "/etc/NetworkManager/system-connections/pimaster-$BUILD_INTERFACE.nmconnection"
    ;;
  dhcpcd)
    # The agent greps "^static ip_address" in this file.
    printf '\n# pimaster: static address on the cluster network\ninterface %s\nstatic ip_address=%s\n' "$BUILD_INTERFACE" "$BUILD_IP" >> /etc/dhcpcd.conf
    ;;
  *)
    echo "this image has neither NetworkManager nor dhcpcd: cannot give $BUILD_INTERFACE its static address" >&2
    exit 1
    ;;
esac

systemctl enable ssh.service dnsmasq.service nfs-server.service rsyslog.service pimaster-nat.service pimaster-firewall.service pimaster-firstboot.service pimaster-first-user.service

# No wifi network ships in the image.
wpa=/etc/wpa_supplicant/wpa_supplicant.conf
if [ -f "$wpa" ]; then
  awk '/^[[:space:]]*network[[:space:]]*=[[:space:]]*\{/ {skip=1} !skip {print} skip && /^[[:space:]]*\}/ {skip=0}' "$wpa" > "$wpa.new"
  mv "$wpa.new" "$wpa"
  chmod 600 "$wpa"
fi
