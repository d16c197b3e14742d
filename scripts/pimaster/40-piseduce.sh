# The PiSeduce web UI and agent: sources at their pinned refs, configuration, databases, units,
# deployable environments. Secrets (secret.key, pwd_secret_key, auth_token, the admin password)
# are placeholders here: pimaster-firstboot makes them on the Pi.
files="$BUILD_STAGING/files"
for app in piseduce_webui piseduce_agent; do
  rm -rf "/root/$app"
  cp -a "$files/$app" "/root/$app"
  chown -R root:root "/root/$app"
done

python3 - "$BUILD_IP_ADDRESS" <<'PY'
import json, sys
ip = sys.argv[1]
def update(path, **values):
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        config = {}
    config.update(values)
    with open(path, "w") as f:
        json.dump(config, f, indent=4)
        f.write("\n")
update("/root/piseduce_webui/config_webui.json",
       port_number=9000, pwd_secret_key="made-at-first-boot", db_url="sqlite:///test-ui.db")
update("/root/piseduce_agent/config_agent.json",
       auth_token=["made-at-first-boot"], port_number=8090, node_type="raspberry",
       key_file="secret.key", db_url="sqlite:///test-agent.db", env_path="/root/environments/", ip=ip)
PY
rm -f /root/piseduce_webui/secret.key /root/piseduce_agent/secret.key /root/piseduce_webui/test-ui.db /root/piseduce_agent/test-agent.db
(cd /root/piseduce_webui && python3 init_database.py)
(cd /root/piseduce_agent && python3 init_database.py config_agent.json)
test -s /root/piseduce_webui/test-ui.db && test -s /root/piseduce_agent/test-agent.db

for unit in /root/piseduce_webui/admin/webui.service /root/piseduce_agent/admin/agent_api.service /root/piseduce_agent/admin/agent_exec.service; do
  install -m 644 "$unit" /etc/systemd/system/
done
systemctl enable webui.service agent_api.service agent_exec.service

# Environments the nodes can deploy: <image>.img.tar.gz files, registered in the agent's database.
mkdir -p /root/environments
if [ -d "$files/environments" ]; then
  for entry in "$files"/environments/*.json; do
    [ -e "$entry" ] || continue
    python3 - "$entry" <<'PY'
import json, shutil, sqlite3, sys
env = json.load(open(sys.argv[1]))
shutil.copyfile(env["path"], "/root/environments/" + env["img_name"])
with sqlite3.connect("/root/piseduce_agent/test-agent.db") as db:
    db.execute("DELETE FROM rasp_environment WHERE name = ?", (env["name"],))
    db.execute("INSERT INTO rasp_environment (name, img_name, img_size, sector_start, ssh_user, web, state) VALUES (?, ?, ?, ?, 'root', 0, 'available')",
               (env["name"], env["img_name"], env["img_size"], env["sector_start"]))
print("environment", env["name"], env["img_name"], env["img_size"], env["sector_start"])
PY
  done
fi
