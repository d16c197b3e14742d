/**
 * What a booted PiSeduce pimaster must be (../shared/piseduce.md): its services up, its first boot
 * done, the NFS root the nodes boot from served and made different from the pimaster itself.
 */
import { quote } from '../../engine/exec.ts';
import { type Check, httpCheck, NFS_SERVICES, rpcCheck } from '../../lib/qemu/checks.ts';
import type { GuestFacts } from '../../lib/qemu/facts.ts';

/** The web UI's published default admin password: it must not work on an image. */
const PUBLISHED_ADMIN_PASSWORD = 'piseduceadmin';
/** Where the checks mount the pimaster's NFS export on the pimaster itself. */
const MNT = '/run/verify-nfs';
/** The static busybox the verifier copies to the guest before the checks (its TFTP client). */
export const GUEST_BUSYBOX = '/run/build-image-verify/busybox'; // busybox picks the applet from argv[1] only under this name

/** The environment (GiB) a pimaster on a card (verify --card-size) must have room for: PiSeduce's images are about this size. */
const ENVIRONMENT_ROOM = 1;

/**
 * `fromUplink`: the host reaches the guest through the pimaster's uplink (verify --node), not
 * through its cluster interface, and so must not reach the cluster's services. `card`: booted as
 * a card larger than the image (verify --card-size), it has room for an environment.
 */
export function pimasterChecks(facts: GuestFacts & { pimaster: { uplink: string } }, how: { fromUplink?: boolean; card?: boolean } = {}): Check[] {
  const { fromUplink = false } = how;
  const ip = facts.address?.address ?? '127.0.0.1';
  const cluster = facts.address ? `${facts.address.network}/${facts.address.prefix}` : '';
  const iface = facts.address?.interface ?? 'eth0';
  const uplink = facts.pimaster.uplink;
  return [
    {
      name: 'first-boot unit finished',
      command:
        'st=$(systemctl show -p ActiveState --value pimaster-firstboot.service); r=$(systemctl show -p Result --value pimaster-firstboot.service); ' +
        'echo "$st, $r; steps done: $(ls /var/lib/pimaster/firstboot | paste -sd" ")"; [ "$st" = active ] && [ "$r" = success ] && [ -e /var/lib/pimaster/firstboot/done ]',
    },
    { name: 'sshd: UsePAM no', command: 'v=$(sshd -T | grep -i "^usepam "); echo "$v"; [ "$v" = "usepam no" ]' },
    // Raspberry Pi OS's first-boot rename (userconf-pi) must be cancelled: its banner says SSH may not work.
    { name: 'sshd: no first-boot rename banner', command: 'v=$(sshd -T | grep -i "^banner "); echo "$v"; [ "$v" = "banner none" ]' },
    { name: 'no pi user', command: 'if getent passwd pi; then exit 1; fi; echo "no pi in the user database"' },
    { name: 'dnsmasq active', command: 'systemctl is-active dnsmasq' },
    {
      name: 'TFTP serves /bootcode.bin and rpiboot_uboot/',
      command:
        `d=$(mktemp -d) && cd "$d" && ${GUEST_BUSYBOX} tftp -g -r bootcode.bin -l bootcode.bin ${ip} && ${GUEST_BUSYBOX} tftp -g -r rpiboot_uboot/cmdline.txt -l cmdline.txt ${ip} && ` +
        'cmp bootcode.bin /tftpboot/bootcode.bin && cmp cmdline.txt /tftpboot/rpiboot_uboot/cmdline.txt && ' +
        `echo "bootcode.bin ($(stat -c %s bootcode.bin) B) and rpiboot_uboot/cmdline.txt ($(stat -c %s cmdline.txt) B) from ${ip}, as on disk"`,
    },
    {
      // The Raspberry Pi kernel mounts NFS 4.1 itself; an initramfs (klibc nfsmount) speaks v2/v3 only.
      name: 'nodes boot without an initramfs, NFS 4.1 root',
      command:
        'cd /tftpboot/rpiboot_uboot && i=$(ls -d initramfs* 2>/dev/null | paste -sd" "); c=$(grep -E "^[[:space:]]*(auto_initramfs=1|initramfs[[:space:]])" config.txt | paste -sd" "); ' +
        'n=$(grep -o "root=/dev/nfs\\|nfsroot=[^ ]*" cmdline.txt | paste -sd" "); echo "initramfs files: ${i:-none}; config.txt: ${c:-no initramfs}; cmdline.txt: ${n}"; ' +
        '[ -z "$i$c" ] && echo "$n" | grep -q "root=/dev/nfs" && echo "$n" | grep -q "vers=4.1"',
    },
    {
      name: `NFS exported to ${cluster} only`,
      command: `e=$(exportfs -v | grep "^/nfs" | tr -s " \\t" " "); echo "\${e:-no /nfs export}" | cut -c1-100; echo "$e" | grep -qxE ${quote(`/nfs ${cluster.replace(/\./g, '\\.')}\\(.*`)} && [ "$(echo "$e" | wc -l)" = 1 ]`,
    },
    {
      // Mounted as the nodes do (their cmdline.txt); the checks after it read the node's root through it.
      name: 'NFS root mountable (vers=4.1, tcp)',
      command: `mkdir -p ${MNT} && mount -t nfs -o vers=4.1,proto=tcp ${ip}:/nfs/raspi ${MNT} && findmnt -no SOURCE,FSTYPE,OPTIONS ${MNT} | cut -c1-90`,
    },
    { name: 'NFS root hostname is nfspi', command: `h=$(cat ${MNT}/etc/hostname); echo "$h"; [ "$h" = nfspi ]` },
    {
      name: 'NFS root is the image as shipped',
      command:
        `cd ${MNT} && left=$(ls -d usr/sbin/policy-rc.d etc/dpkg/dpkg.cfg.d/zz-build-image etc/apt/apt.conf.d/zz-build-image $(find etc usr/sbin -name '*.build-image-saved') 2>/dev/null | paste -sd" "); ` +
        'preload=same; { [ -e /etc/ld.so.preload ] || [ -e etc/ld.so.preload ]; } && ! cmp -s /etc/ld.so.preload etc/ld.so.preload && preload=differs; ' +
        'echo "build files: ${left:-none}; ld.so.preload: ${preload}"; [ -z "$left" ] && [ $preload = same ]',
    },
    {
      name: 'NFS root grows nothing, asks nothing, reads no cloud-init seed',
      command:
        `cd ${MNT} && on=$(ls etc/init.d/resize2fs_once etc/systemd/system/multi-user.target.wants/rpi-resize.service etc/systemd/system/multi-user.target.wants/userconfig.service 2>/dev/null | paste -sd" "); ` +
        'ci=; [ -d etc/cloud ] && [ ! -e etc/cloud/cloud-init.disabled ] && ci="cloud-init "; echo "${ci}${on:-none of resize2fs_once, rpi-resize, userconfig, cloud-init}"; [ -z "$on$ci" ]',
    },
    {
      name: 'NFS root fstab is empty',
      command: `if [ -s ${MNT}/etc/fstab ]; then echo "$(wc -l < ${MNT}/etc/fstab) lines"; exit 1; fi; echo "$(stat -c %s ${MNT}/etc/fstab) bytes"`,
    },
    {
      name: "NFS root host keys differ from the pimaster's",
      command:
        `mine=$(cat /etc/ssh/ssh_host_*_key.pub | awk '{print $2}' | sort); theirs=$(cat ${MNT}/etc/ssh/ssh_host_*_key.pub | awk '{print $2}' | sort); ` +
        'same=$(comm -12 <(echo "$mine") <(echo "$theirs") | grep -c .); echo "$(echo "$theirs" | grep -c .) keys on the NFS root, $same shared with the pimaster"; [ -n "$theirs" ] && [ "$same" = 0 ]',
    },
    {
      name: "NFS root authorizes the pimaster's root key",
      command: `k=$(cat /root/.ssh/id_rsa.pub) && grep -qxF "$k" ${MNT}/root/.ssh/authorized_keys && echo "holds $(ssh-keygen -lf /root/.ssh/id_rsa.pub | awk '{print $2}')"`,
    },
    // Left mounted, it would hang the guest's power-off (the server stops before the client).
    { name: 'NFS root unmounts', command: `umount ${MNT} && echo "unmounted ${MNT}"` },
    {
      name: `firewall: cluster services on ${iface} only, nothing forwarded into the cluster`,
      command:
        'iptables -C INPUT -j pimaster-in && ip6tables -C INPUT -j pimaster-in && iptables -C FORWARD -j pimaster-forward && ' +
        `iptables -S pimaster-in | grep -q -e ${quote(`-A pimaster-in -i ${iface} -j RETURN`)} && [ "$(iptables -S pimaster-in | tail -n1)" = "-A pimaster-in -j DROP" ] && [ "$(ip6tables -S pimaster-in | tail -n1)" = "-A pimaster-in -j DROP" ] && ` +
        '[ "$(iptables -S pimaster-forward | tail -n1)" = "-A pimaster-forward -j DROP" ] && echo "INPUT: $(iptables -S pimaster-in | wc -l) rules ending in DROP (IPv4 and IPv6); FORWARD: $(iptables -S pimaster-forward | wc -l) rules ending in DROP"',
    },
    {
      name: `the nodes' root key is accepted from ${cluster} only`,
      command: `k=$(awk '{print $2}' /nfs/raspi/root/.ssh/id_rsa.pub) && l=$(grep -F "$k" /root/.ssh/authorized_keys) && echo "$l" | cut -d' ' -f1-2; echo "$l" | grep -q ${quote(`^from="${cluster}" `)} && [ "$(echo "$l" | wc -l)" = 1 ]`,
    },
    {
      name: 'web UI and agent start only after a successful first boot',
      command:
        'for u in webui agent_api agent_exec; do ' +
        'systemctl cat "$u" | grep -qx "ConditionPathExists=/var/lib/pimaster/firstboot/done" || { echo "$u: no first-boot condition"; exit 1; }; ' +
        'systemctl show -p After --value "$u" | grep -qw pimaster-firstboot.service || { echo "$u: not ordered after pimaster-firstboot"; exit 1; }; done; echo "webui, agent_api, agent_exec: ConditionPathExists=/var/lib/pimaster/firstboot/done, After=pimaster-firstboot.service"',
    },
    fromUplink
      ? rpcCheck('the uplink reaches neither NFS nor rpcbind', NFS_SERVICES, 'silent')
      : rpcCheck('NFS and rpcbind answer on the cluster network', NFS_SERVICES, 'answers'),
    { name: 'IPv4 forwarding on', command: 'v=$(sysctl -n net.ipv4.ip_forward); echo "net.ipv4.ip_forward = $v"; [ "$v" = 1 ]' },
    {
      name: `NAT to ${uplink}`,
      command: `r=$(iptables -t nat -S POSTROUTING | grep -e ${quote(`-o ${uplink} -j MASQUERADE`)}); echo "\${r:-no MASQUERADE rule out of ${uplink}}"; [ -n "$r" ]`,
    },
    httpCheck('web UI answers on 9000', 9000),
    httpCheck('agent API answers on 8090', 8090),
    {
      name: 'web UI admin password is not the published one',
      command: `cd /root/piseduce_webui && python3 - <<'PY'
import json, sqlite3
from werkzeug.security import check_password_hash
db = json.load(open("config_webui.json"))["db_url"].replace("sqlite:///", "")
row = sqlite3.connect(db).execute("SELECT password FROM user WHERE email = 'admin@piseduce.fr'").fetchone()
if row is None:
    raise SystemExit("no admin@piseduce.fr user in " + db)
if check_password_hash(row[0], "${PUBLISHED_ADMIN_PASSWORD}"):
    raise SystemExit("admin@piseduce.fr still has the published password")
print("admin@piseduce.fr has a password of its own")
PY`,
    },
    ...(how.card
      ? [
          {
            // fallocate reserves the blocks for real (ext4), then the file is removed.
            name: `room for a ${ENVIRONMENT_ROOM} GiB environment in /root/environments`,
            command: `f=/root/environments/.verify-room; fallocate -l ${ENVIRONMENT_ROOM}G $f; ok=$?; rm -f $f; echo "$(df -h --output=avail /root/environments | tail -n1 | tr -d " ") available"; [ $ok = 0 ]`,
          },
        ]
      : []),
  ];
}

/** Guest ports the pimaster checks reach from the host. */
export const PIMASTER_PORTS = [9000, 8090, ...NFS_SERVICES.map((s) => s.port)];
