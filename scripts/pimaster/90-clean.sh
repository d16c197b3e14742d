# Nothing personal or per-device ships: host keys, key pairs, known hosts, machine ids, leases,
# logs and histories are removed from both roots (pimaster-firstboot makes what is needed).
for root in / /nfs/raspi; do
  [ -d "$root/etc" ] || continue
  rm -f "$root"/etc/ssh/ssh_host_*
  rm -f "$root"/root/.ssh/id_* "$root"/root/.ssh/known_hosts "$root"/root/.bash_history "$root"/home/*/.bash_history
  : > "$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/misc/dnsmasq.leases"
  find "$root/var/log" -type f -delete
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/tmp/* "$root"/tmp/*
  rm -rf "$root"/var/lib/pimaster
done
