# A Coder workspace in a Docker container made from a hakim image.
#
# The image's own entrypoint starts the Coder agent: no init_script override, no SSH. The
# agent URL and token are plain container env. See README.md here and docs/entrypoint.md.

terraform {
  required_providers {
    coder = {
      source  = "coder/coder"
      version = ">= 2.0"
    }
    docker = {
      source  = "kreuzwerker/docker"
      version = ">= 3.0"
    }
  }
}

variable "docker_socket" {
  description = "Docker daemon socket (empty: the provider's default)"
  type        = string
  default     = ""
}

variable "registry" {
  description = "Registry path holding hakim-<variant> images, e.g. ghcr.io/OWNER"
  type        = string
}

variable "image_tag" {
  description = "Image tag"
  type        = string
  default     = "latest"
}

provider "docker" {
  host = var.docker_socket != "" ? var.docker_socket : null
}

provider "coder" {}

data "coder_provisioner" "me" {}
data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

data "coder_parameter" "variant" {
  name         = "variant"
  display_name = "Image"
  description  = "hakim image variant"
  type         = "string"
  default      = "base"
  mutable      = true
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

locals {
  image = "${var.registry}/hakim-${data.coder_parameter.variant.value}:${var.image_tag}"
  # A Coder on the Docker host is "localhost" to its users but not to the container:
  # reach it through host.docker.internal (mapped to the host gateway below).
  agent_url = replace(replace(data.coder_workspace.me.access_url, "://localhost", "://host.docker.internal"), "://127.0.0.1", "://host.docker.internal")
}

resource "coder_agent" "main" {
  arch = data.coder_provisioner.me.arch
  os   = "linux"
  dir  = "/home/coder"

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

resource "docker_image" "hakim" {
  name = local.image
}

# The home outlives the container (which exists only while the workspace runs).
resource "docker_volume" "home" {
  name = "coder-${data.coder_workspace.me.id}-home"
  lifecycle {
    ignore_changes = all
  }
  labels {
    label = "coder.owner"
    value = data.coder_workspace_owner.me.name
  }
  labels {
    label = "coder.workspace_id"
    value = data.coder_workspace.me.id
  }
}

resource "docker_container" "workspace" {
  count    = data.coder_workspace.me.start_count
  image    = docker_image.hakim.image_id
  name     = "coder-${data.coder_workspace_owner.me.name}-${lower(data.coder_workspace.me.name)}"
  hostname = data.coder_workspace.me.name
  # No entrypoint or command override: the image's entrypoint runs the agent.
  env = [
    "CODER_AGENT_URL=${local.agent_url}",
    "CODER_AGENT_TOKEN=${coder_agent.main.token}",
  ]
  host {
    host = "host.docker.internal"
    ip   = "host-gateway"
  }
  volumes {
    container_path = "/home/coder"
    volume_name    = docker_volume.home.name
    read_only      = false
  }
  labels {
    label = "coder.owner"
    value = data.coder_workspace_owner.me.name
  }
  labels {
    label = "coder.workspace_id"
    value = data.coder_workspace.me.id
  }
}
