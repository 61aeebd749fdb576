# AMIs with PostgreSQL realised from a Nix binary cache by the nixcache.closure roles, one
# per architecture: amazon-ebs.x86_64 and amazon-ebs.arm64 build in parallel, each from its
# own pins; `-only=amazon-ebs.arm64` builds one.
#
# Written for the HCL2 subset of Packer 1.6.6 (Debian 12's packer), which has the amazon
# builders and the ansible provisioner built in: no required_plugins, no data sources, no
# metadata_options, imds_support or skip_create_ami.  Modern Packer needs the plugins first:
# see plugins.pkr.hcl.example and README.md.
#
#   packer build -var region=eu-west-1 -var base_image=ubuntu-22.04 \
#     -var 'pins={x86_64 = {postgres = "/nix/store/<hash>-postgresql-and-plugins-15.8"},
#                 arm64  = {postgres = "/nix/store/<hash>-postgresql-and-plugins-15.8"}}' \
#     -var 'substituters=["https://cache.example.org"]' \
#     -var 'trusted_public_keys=["cache.example.org-1:..."]' \
#     packer/postgres-ami.pkr.hcl

# -- what goes on it ------------------------------------------------------------------------

variable "pins" {
  type        = map(map(string))
  description = "Store paths by architecture (x86_64, arm64) or Nix system (x86_64-linux, aarch64-linux): {postgres = \"/nix/store/...\", nix = \"/nix/store/...\", pg_prove = \"/nix/store/...\"}; postgres is required, nix optional, and any other name is a further package of the postgres user's profile."

  validation {
    condition     = length([for key, pin in var.pins : key if ! contains(["x86_64", "arm64", "x86_64-linux", "aarch64-linux"], key)]) == 0
    error_message = "The pins must be keyed by architecture (x86_64, arm64) or Nix system (x86_64-linux, aarch64-linux)."
  }
  validation {
    condition     = length([for key, pin in var.pins : key if lookup(pin, "postgres", "") == ""]) == 0
    error_message = "The pins must name a postgres store path for each architecture: {postgres = \"/nix/store/<hash>-<name>\"}."
  }
  validation {
    condition     = length(flatten([for key, pin in var.pins : [for name, path in pin : path if regex_replace(path, "^/nix/store/[0123456789abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+._?=-]+$", "") != ""]])) == 0
    error_message = "The pins must be store paths: /nix/store/ then a 32-character hash in Nix's base32 (0123456789abcdfghijklmnpqrsvwxyz), a dash and a name of letters, digits and +-._?=."
  }
}

variable "substituters" {
  type        = list(string)
  description = "Binary cache URLs the closures are realised from (file://, http://, https:// or s3://)."

  validation {
    condition     = length(var.substituters) > 0 && length([for url in var.substituters : url if regex_replace(url, "^(file|https?|s3)://[^\\s]+$", "") != ""]) == 0
    error_message = "The substituters must be cache URLs starting with file://, http://, https:// or s3://, for example https://cache.example.org."
  }
}

variable "trusted_public_keys" {
  type        = list(string)
  description = "Keys trusted to sign for the caches, name:base64 (a 32-byte ed25519 key)."

  validation {
    condition     = length(var.trusted_public_keys) > 0 && length([for key in var.trusted_public_keys : key if regex_replace(key, "^[A-Za-z0-9._+-]+:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$", "") != ""]) == 0
    error_message = "The trusted_public_keys must be name:base64 of a 32-byte key, as nix-store --generate-binary-cache-key writes them, for example cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=."
  }
}

# -- the image ------------------------------------------------------------------------------

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region to build in."
}

variable "base_image" {
  type        = string
  default     = "debian-12"
  description = "The image to start from: debian-12, ubuntu-20.04, ubuntu-22.04 or ubuntu-24.04 (the official images, newest of the architecture)."

  validation {
    condition     = contains(["debian-12", "ubuntu-20.04", "ubuntu-22.04", "ubuntu-24.04"], var.base_image)
    error_message = "The base_image must be one of debian-12, ubuntu-20.04, ubuntu-22.04, ubuntu-24.04 (or give source_amis)."
  }
}

variable "source_amis" {
  type        = map(string)
  default     = {}
  description = "AMI id to start from, by architecture (x86_64, arm64), instead of the base_image's newest image; its ssh user and root device are still base_image's unless set."
}

variable "source_ami_owner" {
  type        = string
  default     = ""
  description = "Owner of the base images searched for; empty: the base_image's publisher (Debian's or Canonical's account)."
}

variable "instance_types" {
  type        = map(string)
  default     = {}
  description = "Instance type by architecture; unset ones: t3.medium (x86_64), c7g.large (arm64)."
}

variable "ssh_username" {
  type        = string
  default     = ""
  description = "Login user of the source image; empty: the base_image's (admin on Debian, ubuntu on Ubuntu)."
}

variable "root_device_name" {
  type        = string
  default     = ""
  description = "Root device of the source image; empty: the base_image's (/dev/xvda on Debian, /dev/sda1 on Ubuntu)."
}

variable "volume_size" {
  type        = number
  default     = 10
  description = "Root volume size in GiB."
}

variable "volume_type" {
  type        = string
  default     = "gp3"
  description = "Root volume type."
}

variable "volume_iops" {
  type        = number
  default     = 3000
  description = "Provisioned IOPS of a gp3 root volume (3000 is gp3's baseline)."
}

variable "volume_throughput" {
  type        = number
  default     = 125
  description = "Throughput of a gp3 root volume in MiB/s (125 is gp3's baseline)."
}

variable "ami_name_prefix" {
  type    = string
  default = "nixcache-postgres"
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Further tags for the AMIs, their snapshots, the build instances and their volumes."
}

# -- what production builds set -------------------------------------------------------------

variable "encrypt_boot" {
  type        = bool
  default     = true
  description = "Encrypt the AMI's snapshots (and the build volume)."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for encrypt_boot; empty: the account's default EBS key."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Further regions to copy the AMIs to."
}

variable "region_kms_key_ids" {
  type        = map(string)
  default     = {}
  description = "KMS key per region of ami_regions, when kms_key_id is set."
}

variable "ami_users" {
  type        = list(string)
  default     = []
  description = "Account ids allowed to launch the AMIs."
}

variable "snapshot_users" {
  type        = list(string)
  default     = []
  description = "Account ids allowed to create volumes from the snapshots."
}

variable "iam_instance_profile" {
  type        = string
  default     = ""
  description = "Instance profile of the build instance, e.g. one that may read an s3:// cache; empty: none."
}

variable "vpc_id" {
  type    = string
  default = ""
}

variable "vpc_filter" {
  type        = map(string)
  default     = {}
  description = "EC2 filters choosing the VPC (e.g. {\"tag:Name\" = \"build\"}) when vpc_id is empty."
}

variable "subnet_id" {
  type    = string
  default = ""
}

variable "subnet_filter" {
  type        = map(string)
  default     = {}
  description = "EC2 filters choosing the subnet (the one with the most free addresses) when subnet_id is empty."
}

variable "associate_public_ip_address" {
  type        = bool
  default     = false
  description = "Give the build instance a public address even if the subnet does not."
}

variable "ssh_interface" {
  type        = string
  default     = ""
  description = "How Packer reaches the instance: public_ip, private_ip, public_dns or private_dns; empty: Packer's choice."
}

variable "temporary_security_group_source_cidrs" {
  type        = list(string)
  default     = []
  description = "Who may reach the build instance's SSH port; empty: Packer's default (0.0.0.0/0). Narrow it."
}

# -- where the results go -------------------------------------------------------------------

variable "manifest_path" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where the manifest post-processor records the AMIs."
}

variable "artifacts_dir" {
  type        = string
  default     = ""
  description = "Where each architecture's artifacts are downloaded, as <artifacts_dir>/<architecture>/receipts/ and sbom/; empty: the manifest's directory."
}

variable "sbom_timestamp" {
  type        = string
  default     = ""
  description = "The time written into each image's SBOM (UTC such as 2026-01-31T00:00:00Z, or seconds since 1970), for documents that the same pins always reproduce; empty: the time of the build."
}

variable "optimise_store" {
  type        = bool
  default     = true
  description = "Hard-link identical files in the image's store as the roles fill it (/nix/store/.links, as nix-store --optimise does), and set auto-optimise-store in nix.conf: smaller snapshots."
}

variable "galaxy_file" {
  type        = string
  default     = ""
  description = "Requirements file naming the collection (a Galaxy name, a git URL or a built tarball with type: file); empty: packer/requirements.yml."
}

variable "collections_dir" {
  type        = string
  default     = ""
  description = "Where the collection is installed on the machine running Packer; empty: build/packer/collections in the repository."
}

# -- test hooks: the defaults build against real AWS --------------------------------------

variable "ec2_endpoint" {
  type        = string
  default     = ""
  description = "EC2 endpoint URL (e.g. a local moto server); empty: real AWS."
}

variable "ssh_host" {
  type        = string
  default     = ""
  description = "Connect here instead of the instance's address; empty: the instance."
}

variable "ssh_ports" {
  type        = map(number)
  default     = {}
  description = "SSH port by architecture; unset ones: 22."
}

variable "ssh_keypair_name" {
  type        = string
  default     = ""
  description = "Existing key pair to launch with (with ssh_private_key_file); empty: a temporary key pair."
}

variable "ssh_private_key_file" {
  type    = string
  default = ""
}

locals {
  # The architectures (as EC2 names them) with their Nix system and the defaults that differ.
  architectures = {
    x86_64 = { system = "x86_64-linux", image_arch = "amd64", instance_type = "t3.medium" }
    arm64  = { system = "aarch64-linux", image_arch = "arm64", instance_type = "c7g.large" }
  }
  # The official images: name pattern (%s: amd64 or arm64), publisher, login user, root device.
  base_images = {
    "debian-12"    = { name = "debian-12-%s-*", owner = "136693071363", user = "admin", root = "/dev/xvda" }
    "ubuntu-20.04" = { name = "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-%s-server-*", owner = "099720109477", user = "ubuntu", root = "/dev/sda1" }
    "ubuntu-22.04" = { name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-%s-server-*", owner = "099720109477", user = "ubuntu", root = "/dev/sda1" }
    "ubuntu-24.04" = { name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-%s-server-*", owner = "099720109477", user = "ubuntu", root = "/dev/sda1" }
  }
  base             = local.base_images[var.base_image]
  source_ami_owner = var.source_ami_owner != "" ? var.source_ami_owner : local.base.owner
  ssh_username     = var.ssh_username != "" ? var.ssh_username : local.base.user
  root_device_name = var.root_device_name != "" ? var.root_device_name : local.base.root

  # 20240131T120000Z: sortable, and only characters an AMI name allows.
  build_time = formatdate("YYYYMMDD'T'hhmmss'Z'", timestamp())
  local_ec2  = var.ec2_endpoint != ""

  # Per architecture that has pins (by its own name or its Nix system's; the first wins).
  pins = {
    for arch, about in local.architectures : arch => merge(lookup(var.pins, about.system, {}), lookup(var.pins, arch, {}))
    if contains(keys(var.pins), arch) || contains(keys(var.pins), about.system)
  }
  build = {
    for arch, pin in local.pins : arch => {
      postgres      = pin.postgres
      nix           = lookup(pin, "nix", "")
      hash          = substr(basename(pin.postgres), 0, 32)
      ami_name      = "${var.ami_name_prefix}-${arch}-${substr(basename(pin.postgres), 0, 32)}-${local.build_time}"
      instance_type = lookup(var.instance_types, arch, local.architectures[arch].instance_type)
      source_ami    = lookup(var.source_amis, arch, "")
      image_name    = format(local.base.name, local.architectures[arch].image_arch)
      ssh_port      = lookup(var.ssh_ports, arch, 22)
      tags = merge(var.tags, { for name, path in pin : "nixcache:pin:${name}" => path }, {
        Name                    = "${var.ami_name_prefix}-${arch}-${substr(basename(pin.postgres), 0, 32)}-${local.build_time}"
        "nixcache:store"        = pin.postgres
        "nixcache:hash"         = substr(basename(pin.postgres), 0, 32)
        "nixcache:architecture" = arch
        "nixcache:system"       = local.architectures[arch].system
        "nixcache:built"        = local.build_time
        "nixcache:playbook"     = "playbooks/postgres.yml"
      })
      playbook_vars = {
        postgres_store_path = pin.postgres
        # Any further pin (pg_prove = ..., groonga = ...) joins the postgres user's profile.
        postgres_packages   = [for name, path in pin : path if ! contains(["postgres", "nix"], name)]
        nix_store_path      = lookup(pin, "nix", "")
        substituters        = var.substituters
        trusted_public_keys = var.trusted_public_keys
        # the image's SBOM, written by the roles beside the receipts
        postgres_sbom_timestamp  = var.sbom_timestamp
        nix_store_sbom_timestamp = var.sbom_timestamp
        optimise                 = var.optimise_store
      }
    }
  }

  galaxy_file     = var.galaxy_file != "" ? var.galaxy_file : "${path.root}/requirements.yml"
  collections_dir = var.collections_dir != "" ? var.collections_dir : "${path.root}/../build/packer/collections"
  artifacts_dir   = var.artifacts_dir != "" ? var.artifacts_dir : dirname(var.manifest_path)
}

# What both architectures share; the build block below adds what differs.
source "amazon-ebs" "postgres" {
  region = var.region

  encrypt_boot       = var.encrypt_boot
  kms_key_id         = var.kms_key_id
  ami_regions        = var.ami_regions
  region_kms_key_ids = var.region_kms_key_ids
  ami_users          = var.ami_users
  snapshot_users     = var.snapshot_users

  launch_block_device_mappings {
    device_name           = local.root_device_name
    volume_size           = var.volume_size
    volume_type           = var.volume_type
    iops                  = var.volume_type == "gp3" ? var.volume_iops : 0
    throughput            = var.volume_type == "gp3" ? var.volume_throughput : 0
    encrypted             = var.encrypt_boot
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }

  iam_instance_profile        = var.iam_instance_profile
  vpc_id                      = var.vpc_id
  subnet_id                   = var.subnet_id
  associate_public_ip_address = var.associate_public_ip_address
  ssh_interface               = var.ssh_interface

  temporary_security_group_source_cidrs = var.temporary_security_group_source_cidrs

  dynamic "vpc_filter" {
    for_each = length(var.vpc_filter) > 0 && var.vpc_id == "" ? [var.vpc_filter] : []
    content {
      filters = vpc_filter.value
    }
  }

  dynamic "subnet_filter" {
    for_each = length(var.subnet_filter) > 0 && var.subnet_id == "" ? [var.subnet_filter] : []
    content {
      filters   = subnet_filter.value
      most_free = true
    }
  }

  custom_endpoint_ec2        = var.ec2_endpoint
  skip_region_validation     = local.local_ec2
  skip_credential_validation = local.local_ec2
  skip_metadata_api_check    = local.local_ec2

  communicator         = "ssh"
  ssh_username         = local.ssh_username
  ssh_host             = var.ssh_host
  ssh_keypair_name     = var.ssh_keypair_name
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "10m"
}

build {
  # An architecture without pins stops the build here (Packer 1.6.6 has no way to fail with
  # a message of one's own: file() of a path that is the message does it).  -only leaves
  # the other source out, and this check with it.
  source "amazon-ebs.postgres" {
    name          = "x86_64"
    instance_type = local.build["x86_64"].instance_type
    ami_name      = contains(keys(local.build), "x86_64") ? local.build["x86_64"].ami_name : file("no pins for x86_64: add pins.x86_64 (or pins.x86_64-linux), or build arm64 alone with -only=amazon-ebs.arm64")
    source_ami    = local.build["x86_64"].source_ami
    ssh_port      = local.build["x86_64"].ssh_port
    dynamic "source_ami_filter" {
      for_each = local.build["x86_64"].source_ami == "" ? [local.build["x86_64"].image_name] : []
      content {
        filters     = { name = source_ami_filter.value, architecture = "x86_64", root-device-type = "ebs", virtualization-type = "hvm" }
        owners      = [local.source_ami_owner]
        most_recent = true
      }
    }
    tags            = local.build["x86_64"].tags
    snapshot_tags   = local.build["x86_64"].tags
    run_tags        = local.build["x86_64"].tags
    run_volume_tags = local.build["x86_64"].tags
  }

  source "amazon-ebs.postgres" {
    name          = "arm64"
    instance_type = local.build["arm64"].instance_type
    ami_name      = contains(keys(local.build), "arm64") ? local.build["arm64"].ami_name : file("no pins for arm64: add pins.arm64 (or pins.aarch64-linux), or build x86_64 alone with -only=amazon-ebs.x86_64")
    source_ami    = local.build["arm64"].source_ami
    ssh_port      = local.build["arm64"].ssh_port
    dynamic "source_ami_filter" {
      for_each = local.build["arm64"].source_ami == "" ? [local.build["arm64"].image_name] : []
      content {
        filters     = { name = source_ami_filter.value, architecture = "arm64", root-device-type = "ebs", virtualization-type = "hvm" }
        owners      = [local.source_ami_owner]
        most_recent = true
      }
    }
    tags            = local.build["arm64"].tags
    snapshot_tags   = local.build["arm64"].tags
    run_tags        = local.build["arm64"].tags
    run_volume_tags = local.build["arm64"].tags
  }

  provisioner "ansible" {
    playbook_file        = "${path.root}/../playbooks/postgres.yml"
    galaxy_file          = local.galaxy_file
    galaxy_force_install = true
    collections_path     = "${local.collections_dir}/${source.name}"
    use_proxy            = false
    user                 = local.ssh_username
    ansible_env_vars = [
      "ANSIBLE_COLLECTIONS_PATH=${local.collections_dir}/${source.name}",
      "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=False",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_PYTHON_INTERPRETER=auto_silent",
      "ANSIBLE_NOCOLOR=1",
    ]
    extra_arguments = ["--extra-vars", jsonencode(local.build[source.name].playbook_vars)]
  }

  # The receipts written by realise (closure, hashes, signatures, source caches) come back
  # next to the manifest, as <artifacts_dir>/<architecture>/receipts/.
  provisioner "file" {
    direction   = "download"
    source      = "/nix/var/nixcache/receipts/"
    destination = "${local.artifacts_dir}/${source.name}/"
  }

  # The image's SBOM (CycloneDX and SPDX JSON of the realised closures, written by the roles)
  # comes back beside them, as <artifacts_dir>/<architecture>/sbom/image.{cdx,spdx}.json.
  provisioner "file" {
    direction   = "download"
    source      = "/nix/var/nixcache/sbom/"
    destination = "${local.artifacts_dir}/${source.name}/"
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      architecture        = source.name
      nix_system          = local.architectures[source.name].system
      postgres_store_path = local.build[source.name].postgres
      nix_store_path      = local.build[source.name].nix
      closure_hash        = local.build[source.name].hash
      receipts            = "${local.artifacts_dir}/${source.name}/receipts"
      sbom                = "${local.artifacts_dir}/${source.name}/sbom"
    }
  }
}
