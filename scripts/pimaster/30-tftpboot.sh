# What the cluster nodes network-boot from: bootcode.bin and a copy of the boot partition whose
# cmdline.txt (from the overlay) mounts the NFS root. No EEPROM update files: nodes would flash
# their EEPROM from them.
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
  --exclude /recovery.bin --exclude /ssh --exclude /authorized_keys --exclude /admin-password \
  "$boot/" /tftpboot/rpiboot_uboot/
chmod -R u=rwX,go=rX /tftpboot
