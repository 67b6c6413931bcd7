"""Structure checks of the Coder templates under deploy/coder/, parsed with python-hcl2.

usage: check_templates.py proxmox|docker DIR

Prints `ok <check>` per passed check; on the first failure prints `FAIL <check>: <why>` to
stderr and exits 1. python-hcl2 keeps quotes on keys and strings, wraps blocks in lists and
adds `__is_block__`/`__comments__` markers; `norm` undoes that first.
"""

import re
import sys
from pathlib import Path

import hcl2


def norm(v):
    if isinstance(v, dict):
        return {
            norm_key(k): norm(x)
            for k, x in v.items()
            if k not in ("__is_block__", "__comments__", "__inline_comments__")
        }
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def norm_key(k):
    return k[1:-1] if len(k) >= 2 and k[0] == '"' and k[-1] == '"' else k


def load(directory):
    merged = {}
    files = sorted(Path(directory).glob("*.tf"))
    if not files:
        fail("files", f"no .tf file in {directory}")
    for f in files:
        with open(f) as fh:
            doc = norm(hcl2.load(fh))
        for k, v in doc.items():
            merged.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    return merged


def fail(check, why):
    print(f"FAIL {check}: {why}", file=sys.stderr)
    sys.exit(1)


def ok(check):
    print(f"ok {check}")


def blocks(doc, kind):
    """{(type, name): body} for `resource`/`data` blocks."""
    out = {}
    for entry in doc.get(kind, []):
        for typ, named in entry.items():
            for name, body in named.items():
                out[(typ, name)] = body
    return out


def one(body, key):
    v = body.get(key)
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict):
        return v[0]
    return v


def walk(v, path=""):
    yield path, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield path + "/" + k, None
            yield from walk(x, path + "/" + k)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from walk(x, f"{path}[{i}]")


def no_remote_execution(doc):
    for path, v in walk(doc):
        last = path.rsplit("/", 1)[-1]
        if last in ("connection", "provisioner"):
            fail("no-remote-execution", f"`{last}` block at {path}")
        if isinstance(v, str) and re.search(r"remote-exec|local-exec", v):
            fail("no-remote-execution", f"{v!r} at {path}")
    for entry in doc.get("provider", []):
        for name, body in entry.items():
            if "ssh" in body:
                fail("no-remote-execution", f"provider {name} has an ssh block")
    ok("no-remote-execution")


def agent_token_ref(doc):
    agents = [n for (t, n) in blocks(doc, "resource") if t == "coder_agent"]
    if not agents:
        fail("agent", "no coder_agent resource")
    return agents, {f"${{coder_agent.{a}.token}}" for a in agents}


def agent_extras(doc):
    res = blocks(doc, "resource")
    for (t, n), body in res.items():
        if t == "coder_agent":
            keys = {m.get("key") for m in body.get("metadata", [])}
            if len(keys) < 3:
                fail("agent-extras", f"coder_agent.{n} has {len(keys)} metadata items")
            scripts = " ".join(m.get("script", "") for m in body.get("metadata", []))
            for what in ("cpu", "mem", "disk"):
                if f"coder stat {what}" not in scripts:
                    fail("agent-extras", f"no `coder stat {what}` metadata")
    if not any(t == "coder_app" for (t, _) in res):
        fail("agent-extras", "no coder_app (code-server or VS Code)")
    ok("agent-extras")


def local_expr(doc, expr):
    """Follows `${local.x}` to its expression (one level)."""
    m = re.fullmatch(r"\$\{local\.(\w+)\}", expr or "")
    if not m:
        return expr
    for entry in doc.get("locals", []):
        if m.group(1) in entry:
            return entry[m.group(1)]
    fail("locals", f"local.{m.group(1)} is not defined")


def home_mounts(ct):
    mounts = list(ct.get("mount_point", []))
    for d in ct.get("dynamic", []):
        for body in d.get("mount_point", {}).get("content", []) if "mount_point" in d else []:
            mounts.append(body)
    return [m for m in mounts if m.get("path") == "/home/coder"]


def check_proxmox(doc):
    res = blocks(doc, "resource")
    cts = [(n, b) for (t, n), b in res.items() if t == "proxmox_virtual_environment_container"]
    if len(cts) != 1:
        fail("container", f"expected one proxmox_virtual_environment_container, found {len(cts)}")
    name, ct = cts[0]
    _, tokens = agent_token_ref(doc)
    env = ct.get("environment_variables") or {}
    if env.get("CODER_AGENT_TOKEN") not in tokens:
        fail("token", f"CODER_AGENT_TOKEN is {env.get('CODER_AGENT_TOKEN')!r}, not one of {sorted(tokens)}")
    if "access_url" not in str(env.get("CODER_AGENT_URL")):
        fail("token", f"CODER_AGENT_URL is {env.get('CODER_AGENT_URL')!r}, not the workspace access URL")
    ok("token")
    if "count" in ct:
        fail("persistent", "the container has a count: stopping would delete it")
    if not re.fullmatch(r"\$\{data\.coder_workspace\.\w+\.start_count == 1\}", str(ct.get("started"))):
        fail("persistent", f"started is {ct.get('started')!r}, not start_count == 1")
    ok("persistent")
    if not home_mounts(ct):
        fail("home", "no mount_point with path /home/coder")
    ok("home")
    os_ = one(ct, "operating_system") or {}
    tfid = str(local_expr(doc, os_.get("template_file_id")))
    refs = set(re.findall(r"(proxmox_oci_image|proxmox_virtual_environment_oci_image|proxmox_virtual_environment_download_file|proxmox_download_file)\.(\w+)", tfid))
    kinds = {k for k, _ in refs}
    if not any("oci_image" in k for k in kinds) or not any("download_file" in k for k in kinds):
        fail("template", f"template_file_id {tfid!r} must reference the pulled and the downloaded template")
    for k, n in refs:
        if (k, n) not in res:
            fail("template", f"template_file_id references {k}.{n}, which is not defined")
        body = res[(k, n)]
        if "download_file" in k and (body.get("content_type") != "vztmpl" or "checksum" not in body):
            fail("template", f"{k}.{n} needs content_type vztmpl and a checksum")
        if "oci_image" in k and ":" not in str(body.get("reference", "")):
            fail("template", f"{k}.{n} reference has no tag")
    ok("template")
    ignored = " ".join(one(ct, "lifecycle").get("ignore_changes", []) if one(ct, "lifecycle") else [])
    if "template_file_id" not in ignored:
        fail("lifecycle", "a new template would replace the CT and its home volume (ignore_changes)")
    ok("lifecycle")
    nic = one(ct, "network_interface") or {}
    if nic.get("host_managed") is not True:
        fail("network", "network_interface.host_managed must be true for an application container")
    ipv4 = one(one(one(ct, "initialization") or {}, "ip_config") or {}, "ipv4") or {}
    if ipv4.get("address") != "dhcp":
        fail("network", f"ipv4 address is {ipv4.get('address')!r}, not dhcp")
    ok("network")


def check_docker(doc):
    res = blocks(doc, "resource")
    cts = [(n, b) for (t, n), b in res.items() if t == "docker_container"]
    if len(cts) != 1:
        fail("container", f"expected one docker_container, found {len(cts)}")
    _, ct = cts[0]
    _, tokens = agent_token_ref(doc)
    env = ct.get("env") or []
    if not any(e.split("=", 1)[0] == "CODER_AGENT_TOKEN" and e.split("=", 1)[1] in tokens for e in env):
        fail("token", f"env {env!r} has no CODER_AGENT_TOKEN from coder_agent.<name>.token")
    ok("token")
    if not re.fullmatch(r"\$\{data\.coder_workspace\.\w+\.start_count\}", str(ct.get("count"))):
        fail("persistent", f"count is {ct.get('count')!r}, not start_count")
    ok("persistent")
    for k in ("entrypoint", "command"):
        if k in ct:
            fail("entrypoint", f"the container overrides `{k}`; the image's entrypoint must run")
    ok("entrypoint")
    vols = [v for v in ct.get("volumes", []) if v.get("container_path") == "/home/coder"]
    if not vols:
        fail("home", "no volume at /home/coder")
    m = re.fullmatch(r"\$\{docker_volume\.(\w+)\.name\}", str(vols[0].get("volume_name")))
    if not m or ("docker_volume", m.group(1)) not in res:
        fail("home", f"volume_name {vols[0].get('volume_name')!r} is not a docker_volume")
    vol = res[("docker_volume", m.group(1))]
    if "coder_workspace.me.id" not in str(vol.get("name")):
        fail("home", f"the home volume name {vol.get('name')!r} is not made from the workspace id")
    ok("home")
    hosts = [h for h in ct.get("host", []) if h.get("host") == "host.docker.internal"]
    if not hosts or hosts[0].get("ip") != "host-gateway":
        fail("host-gateway", "no host.docker.internal -> host-gateway mapping")
    ok("host-gateway")


def main():
    kind, directory = sys.argv[1], sys.argv[2]
    doc = load(directory)
    {"proxmox": check_proxmox, "docker": check_docker}[kind](doc)
    agent_extras(doc)
    no_remote_execution(doc)


if __name__ == "__main__":
    main()
