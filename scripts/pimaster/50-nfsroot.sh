# The root filesystem the cluster nodes boot over NFS: a copy of the pimaster's (pv and vim
# included), then everything that must differ. Its keys are made at first boot.
nfs=/nfs/raspi
rm -rf "$nfs"
mkdir -p "$nfs/root"
chmod --reference=/root "$nfs/root"
# One cp -a of everything but the pimaster's own trees, hard links, ACLs and extended attributes
# kept; other filesystems (/proc, /run, ...) become empty directories, as rsync -x leaves them. cp
# rather than rsync: it copies in the kernel (copy_file_range) where rsync moves every byte through
# emulated code, 4x slower under qemu-user.
root_dev=$(stat -c %d /)
entries=()
while IFS= read -r -d '' line; do
  dev=${line%% *} entry=${line#* }
  case "$entry" in
    /nfs | /tftpboot | /root | /root/environments | /root/piseduce_webui | /root/piseduce_agent) ;;
    *)
      if [ "$dev" = "$root_dev" ]; then
        entries+=("$entry")
      else
        mkdir -p "$nfs$entry"
        chmod --reference="$entry" "$nfs$entry"
      fi
      ;;
  esac
done < <(find / /root -mindepth 1 -maxdepth 1 -printf '%D %p\0')
cp -a --one-file-system --parents "${entries[@]}" "$nfs/"
# The copy is of the image as it ships, not as the build has it (the host's DNS, no services
# starting, the build's apt and dpkg settings, the image's ld.so.preload set aside).
"$BUILD_RESTORE_IMAGE_FILES" "$nfs"

echo nfspi > "$nfs/etc/hostname"
sed -i -E "s/^127\.0\.1\.1.*/127.0.1.1\tnfspi/" "$nfs/etc/hosts"
: > "$nfs/etc/fstab"
: > "$nfs/etc/machine-id"
rm -f "$nfs"/etc/ssh/ssh_host_* "$nfs"/root/.ssh/* "$nfs/root/piseduce-admin-password"
mkdir -p "$nfs/root/boot_dir" "$nfs/root/fs_dir"
install -d -m 700 "$nfs/root/.ssh"
# openssh-client >= 9.0 dropped the rsh alternative; the agent still calls rsh.
ln -sf ssh "$nfs/usr/bin/rsh"

# No static address: nodes take theirs from the pimaster's DHCP.
rm -f "$nfs"/etc/NetworkManager/system-connections/pimaster-*.nmconnection
if [ -f "$nfs/etc/dhcpcd.conf" ]; then
  sed -i '/^# pimaster: static address/,/^static ip_address=/d' "$nfs/etc/dhcpcd.conf"
fi

# The node runs sshd by itself (the boot-partition ssh switch never fires over the network) and
# none of the pimaster's services; its host keys are not regenerated at each node's boot; nothing
# that grows a root filesystem (a node's is NFS), asks for a user, or reads a cloud-init seed; no
# swap file (it would be on the NFS root all nodes share, where the kernel does not swap).
systemctl --root="$nfs" enable ssh.service
for unit in dnsmasq.service nfs-server.service pimaster-firstboot.service pimaster-first-user.service pimaster-nat.service pimaster-firewall.service \
            webui.service agent_api.service agent_exec.service regenerate_ssh_host_keys.service \
            sshswitch.service rpi-resize.service userconfig.service dphys-swapfile.service; do
  systemctl --root="$nfs" disable "$unit" 2>/dev/null || true
  systemctl --root="$nfs" mask "$unit" 2>/dev/null || true
done
# resize2fs_once (bookworm) is a SysV script: it would fail at every node boot and stay.
rm -f "$nfs/etc/init.d/resize2fs_once" "$nfs"/etc/rc?.d/[SK][0-9][0-9]resize2fs_once
if [ -d "$nfs/etc/cloud" ]; then
  touch "$nfs/etc/cloud/cloud-init.disabled"
fi
