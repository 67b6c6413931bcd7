# A Coder workspace in a Proxmox VE 9.1+ container made from a hakim image.
#
# No SSH anywhere: the image's own entrypoint fetches and starts the Coder agent, and the agent
# URL and token reach it only as the CT's create-time environment (`environment_variables`).
# That works because hakim images carry no `Env` key in their OCI config (Proxmox would let it
# replace the create-time env). See README.md here and docs/entrypoint.md in hakim.

terraform {
  required_providers {
    coder = {
      source  = "coder/coder"
      version = ">= 2.0"
    }
    proxmox = {
      source  = "bpg/proxmox"
      version = ">= 0.100.0"
    }
  }
}

# --- Admin settings (set once per template) ----------------------------------------------

variable "proxmox_endpoint" {
  description = "Proxmox VE API URL, e.g. https://pve.example:8006/"
  type        = string
}

variable "proxmox_api_token" {
  description = "API token `user@realm!name=secret` allowed to pull templates and manage CTs"
  type        = string
  sensitive   = true
}

variable "proxmox_insecure" {
  description = "Accept a self-signed certificate on the API"
  type        = bool
  default     = false
}

variable "node" {
  description = "Proxmox node that runs the workspaces"
  type        = string
}

variable "template_datastore" {
  description = "Datastore with `vztmpl` content for the image (e.g. local)"
  type        = string
  default     = "local"
}

variable "rootfs_datastore" {
  description = "Datastore for the CT root disk and the optional home volume (e.g. local-lvm)"
  type        = string
  default     = "local-lvm"
}

variable "bridge" {
  description = "Bridge of eth0; the CT gets its address by DHCP"
  type        = string
  default     = "vmbr0"
}

variable "image_source" {
  description = "`registry`: Proxmox pulls REGISTRY/hakim-VARIANT:TAG; `release`: it downloads the release .tar"
  type        = string
  default     = "registry"
  validation {
    condition     = contains(["registry", "release"], var.image_source)
    error_message = "image_source is `registry` or `release`."
  }
}

variable "registry" {
  description = "Registry path holding hakim-<variant> images, e.g. ghcr.io/OWNER (for `registry`)"
  type        = string
  default     = ""
}

variable "image_tag" {
  description = "Tag to pull (a tag is required; Proxmox rejects digests), or the release tag"
  type        = string
  default     = "latest"
}

variable "arch" {
  description = "Architecture of the release asset (the node's: amd64 or arm64)"
  type        = string
  default     = "amd64"
}

variable "release_base_url" {
  description = "Where release assets live: BASE/<tag>/hakim-<variant>_<tag>-<arch>.tar (+ .sha256)"
  type        = string
  default     = ""
}

variable "release_sha256" {
  description = "sha256 of hakim-<variant>_<tag>-<arch>.tar per variant (from the release's .sha256 files)"
  type        = map(string)
  default     = {}
}

provider "proxmox" {
  endpoint  = var.proxmox_endpoint
  api_token = var.proxmox_api_token
  insecure  = var.proxmox_insecure
}

provider "coder" {}

data "coder_provisioner" "me" {}
data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

# --- Workspace parameters -----------------------------------------------------------------

data "coder_parameter" "variant" {
  name         = "variant"
  display_name = "Image"
  description  = "hakim image variant"
  type         = "string"
  default      = "base"
  # The CT keeps its image (see lifecycle below), so a change would not take effect.
  mutable = false
  option {
    name  = "base"
    value = "base"
  }
  option {
    name  = "tooling"
    value = "tooling"
  }
  option {
    name  = "js"
    value = "js"
  }
  option {
    name  = "python"
    value = "python"
  }
  option {
    name  = "rust"
    value = "rust"
  }
  option {
    name  = "elixir"
    value = "elixir"
  }
  option {
    name  = "php"
    value = "php"
  }
}

data "coder_parameter" "cpu" {
  name         = "cpu"
  display_name = "CPU cores"
  type         = "number"
  default      = 2
  mutable      = true
  validation {
    min = 1
    max = 32
  }
}

data "coder_parameter" "memory" {
  name         = "memory"
  display_name = "Memory (MiB)"
  type         = "number"
  default      = 4096
  mutable      = true
  validation {
    min = 512
    max = 131072
  }
}

data "coder_parameter" "disk" {
  name         = "disk"
  display_name = "Root disk (GiB)"
  type         = "number"
  default      = 16
  mutable      = false
  validation {
    min = 4
    max = 1024
  }
}

data "coder_parameter" "home_size" {
  name         = "home_size"
  display_name = "Dedicated /home/coder volume (GiB, 0 = none)"
  description  = "A separate volume for /home/coder; 0 keeps the home on the root disk"
  type         = "number"
  default      = 0
  mutable      = false
  validation {
    min = 0
    max = 4096
  }
}

locals {
  variant    = data.coder_parameter.variant.value
  image_name = "hakim-${local.variant}"
  # Proxmox's own pull naming: the reference's last path segment with `:` made `_`, plus
  # .tar. The release asset is named as a pull of the per-arch tag <tag>-<arch> would be.
  template_file = "${local.image_name}_${var.image_tag}.tar"
  release_file  = "${local.image_name}_${var.image_tag}-${var.arch}.tar"
  template_file_id = (var.image_source == "registry"
    ? proxmox_oci_image.hakim[0].id
  : proxmox_virtual_environment_download_file.hakim[0].id)
  hostname = lower(replace("${data.coder_workspace_owner.me.name}-${data.coder_workspace.me.name}", "/[^a-zA-Z0-9-]/", "-"))
}

# --- The image as a vztmpl template -------------------------------------------------------

resource "proxmox_oci_image" "hakim" {
  count        = var.image_source == "registry" ? 1 : 0
  node_name    = var.node
  datastore_id = var.template_datastore
  reference    = "${var.registry}/${local.image_name}:${var.image_tag}"
  file_name    = local.template_file
  # Workspaces on the same variant and tag share the file name; the CT no longer needs the
  # file once it is created.
  overwrite_unmanaged = true
  lifecycle {
    precondition {
      condition     = var.registry != ""
      error_message = "image_source = \"registry\" needs the registry variable (e.g. ghcr.io/OWNER)."
    }
  }
}

resource "proxmox_virtual_environment_download_file" "hakim" {
  count              = var.image_source == "release" ? 1 : 0
  node_name          = var.node
  datastore_id       = var.template_datastore
  content_type       = "vztmpl"
  url                = "${var.release_base_url}/${var.image_tag}/${local.release_file}"
  file_name          = local.release_file
  checksum           = lookup(var.release_sha256, local.variant, null)
  checksum_algorithm  = "sha256"
  overwrite_unmanaged = true
  lifecycle {
    precondition {
      condition     = var.release_base_url != "" && contains(keys(var.release_sha256), local.variant)
      error_message = "image_source = \"release\" needs release_base_url and this variant's sha256 in release_sha256 (from hakim-<variant>_<tag>-<arch>.tar.sha256)."
    }
  }
}

# --- The agent ----------------------------------------------------------------------------

resource "coder_agent" "main" {
  arch = data.coder_provisioner.me.arch
  os   = "linux"
  dir  = "/home/coder"

  # code-server for the browser IDE, installed into the home volume once.
  startup_script = <<-EOT
    set -e
    if [ ! -x "$HOME/.local/code-server/bin/code-server" ]; then
      curl -fsSL https://code-server.dev/install.sh | sh -s -- --method=standalone --prefix="$HOME/.local/code-server"
    fi
    "$HOME/.local/code-server/bin/code-server" --auth none --port 13337 >/tmp/code-server.log 2>&1 &
  EOT

  metadata {
    display_name = "CPU Usage"
    key          = "0_cpu_usage"
    script       = "coder stat cpu"
    interval     = 10
    timeout      = 1
  }
  metadata {
    display_name = "RAM Usage"
    key          = "1_ram_usage"
    script       = "coder stat mem"
    interval     = 10
    timeout      = 1
  }
  metadata {
    display_name = "Home Disk"
    key          = "3_home_disk"
    script       = "coder stat disk --path /home/coder"
    interval     = 60
    timeout      = 1
  }
}

resource "coder_app" "code-server" {
  agent_id     = coder_agent.main.id
  slug         = "code-server"
  display_name = "code-server"
  url          = "http://localhost:13337/?folder=/home/coder"
  icon         = "/icon/code.svg"
  subdomain    = false
  share        = "owner"
  healthcheck {
    url       = "http://localhost:13337/healthz"
    interval  = 5
    threshold = 6
  }
}

# --- The container ------------------------------------------------------------------------

resource "proxmox_virtual_environment_container" "workspace" {
  node_name     = var.node
  description   = "Coder workspace ${data.coder_workspace_owner.me.name}/${data.coder_workspace.me.name} (${local.image_name})"
  tags          = ["coder", "hakim"]
  unprivileged  = true
  start_on_boot = false
  # The CT persists: stopping the workspace stops it, and never deletes it.
  started = data.coder_workspace.me.start_count == 1

  features {
    nesting = true
  }

  cpu {
    cores = data.coder_parameter.cpu.value
  }

  memory {
    dedicated = data.coder_parameter.memory.value
  }

  disk {
    datastore_id = var.rootfs_datastore
    size         = data.coder_parameter.disk.value
  }

  dynamic "mount_point" {
    for_each = data.coder_parameter.home_size.value > 0 ? [1] : []
    content {
      volume = var.rootfs_datastore
      size   = "${data.coder_parameter.home_size.value}G"
      path   = "/home/coder"
      backup = true
    }
  }

  initialization {
    hostname = local.hostname
    ip_config {
      ipv4 {
        address = "dhcp"
      }
    }
  }

  # An application container (our entrypoint is its init) needs host-managed networking.
  network_interface {
    name         = "eth0"
    bridge       = var.bridge
    host_managed = true
  }

  operating_system {
    template_file_id = local.template_file_id
    type             = "unmanaged"
  }

  # The only way credentials reach the CT. The token changes on every build; the provider
  # rewrites the env and reboots the CT, and the entrypoint prefers this env over the token
  # it saved at the previous start.
  environment_variables = {
    CODER_AGENT_URL   = data.coder_workspace.me.access_url
    CODER_AGENT_TOKEN = coder_agent.main.token
  }

  lifecycle {
    # template_file_id forces a new CT. A new image (tag or source) must not destroy the CT
    # and its /home/coder volume; moving a workspace to a new image is a deliberate rebuild
    # (README.md, "Updating the image").
    ignore_changes = [
      operating_system[0].template_file_id,
      disk[0].size,
      mount_point,
      initialization[0].hostname,
    ]
  }
}

resource "coder_metadata" "workspace" {
  count       = data.coder_workspace.me.start_count
  resource_id = proxmox_virtual_environment_container.workspace.id
  item {
    key   = "image"
    value = local.image_name
  }
  item {
    key   = "template"
    value = local.template_file_id
  }
}
