# What the cluster nodes network-boot from: bootcode.bin and a copy of the boot partition whose
# cmdline.txt (from the overlay) mounts the NFS root. No EEPROM update files: nodes would flash
# their EEPROM from them. No initramfs: the Raspberry Pi kernel mounts the NFS root itself (NFS
# 4.1, as cmdline.txt asks), while an initramfs' klibc nfsmount speaks NFS v2/v3 only. None of
# the pimaster's own first-boot settings (SSH switch, keys, Imager's and cloud-init's files).
files="$BUILD_STAGING/files"
boot="$BUILD_BOOT_MOUNT"
mkdir -p /tftpboot/rpiboot_uboot
if [ -f "$files/bootcode.bin" ]; then
  install -m 644 "$files/bootcode.bin" /tftpboot/bootcode.bin
elif [ -f "$boot/bootcode.bin" ]; then
  install -m 644 "$boot/bootcode.bin" /tftpboot/bootcode.bin
else
  echo "no bootcode.bin: the base image has none; give one with --bootcode FILE" >&2
  exit 1
fi
rsync -rt --delete \
  --exclude /bootcode.bin --exclude /cmdline.txt --exclude /pieeprom.upd --exclude /pieeprom.sig \
  --exclude /recovery.bin --exclude '/initramfs*' --exclude /ssh --exclude /ssh.txt \
  --exclude /authorized_keys --exclude /admin-password --exclude /userconf --exclude /userconf.txt \
  --exclude /firstrun.sh --exclude /custom.toml --exclude /user-data --exclude /meta-data \
  --exclude /network-config \
  "$boot/" /tftpboot/rpiboot_uboot/
config=/tftpboot/rpiboot_uboot/config.txt
if [ -f "$config" ]; then
  sed -i -E '/^[[:space:]]*(auto_initramfs|initramfs)[[:space:]=]/d' "$config"
  printf '\n[all]\n# pimaster: nodes boot without an initramfs (the kernel mounts the NFS root)\nauto_initramfs=0\n' >> "$config"
fi
chmod -R u=rwX,go=rX /tftpboot
