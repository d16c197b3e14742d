# Nothing personal or per-device ships: host keys, key pairs, known hosts, machine ids, leases,
# logs and histories are removed from both roots (pimaster-firstboot makes what is needed).
# From trixie on, Raspberry Pi OS ships machine-id "uninitialized": the first boot is then one
# (ConditionFirstBoot=yes, which its first-boot growth needs). Earlier releases ship it empty.
case "$BUILD_CODENAME" in
  stretch|buster|bullseye|bookworm) machine_id= ;;
  *) machine_id=uninitialized ;;
esac
for root in / /nfs/raspi; do
  [ -d "$root/etc" ] || continue
  rm -f "$root"/etc/ssh/ssh_host_*
  rm -f "$root"/root/.ssh/id_* "$root"/root/.ssh/known_hosts "$root"/root/.bash_history "$root"/home/*/.bash_history
  if [ -n "$machine_id" ] && [ "$root" = / ]; then echo "$machine_id" > /etc/machine-id; else : > "$root/etc/machine-id"; fi
  rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/misc/dnsmasq.leases"
  find "$root/var/log" -type f -delete
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/tmp/* "$root"/tmp/*
  # Caches apt and ldconfig make again when needed: they hold times and inode numbers of this build.
  rm -f "$root"/var/cache/apt/*.bin "$root"/var/cache/ldconfig/aux-cache
  rm -rf "$root"/var/lib/pimaster
done
