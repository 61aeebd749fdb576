# One-stage PostgreSQL AMI: a surrogate instance builds the image's root on an attached
# volume, and the AMI is registered from that volume's snapshot.
#
# The surrogate (any Debian or Ubuntu image of the architecture) gets the collection's
# Galaxy tarballs, then packer/scripts/surrogate-build.sh partitions and formats the
# volume, bootstraps Debian on it with debootstrap, makes it bootable, mounts /dev, /proc
# and /sys into it and runs the collection's playbook (nixcache.closure.postgres) on it with
# `ansible-playbook -c community.general.chroot -i '/mnt,'`.  Packer's ansible provisioner
# is not used: it would add its own inventory and its changes would land on the surrogate's
# own disk.  No second instance is started from the result.
#
#   packer build -var-file=postgres.pkrvars.hcl -var architecture=arm64 \
#     -var 'collection_tarballs=["build/nixcache-closure-<version>.tar.gz", "build/community-general-<version>.tar.gz"]' \
#     packer/postgres-ami-surrogate.pkr.hcl
#
# packer/README.md compares this with postgres-ami.pkr.hcl (two stages: an instance of a
# stock image provisioned over SSH, then saved).

# -- what goes on the image (required) ------------------------------------------------------

variable "pins" {
  type        = map(map(string))
  description = "Store paths per architecture, as for postgres-ami.pkr.hcl: {arm64 = {postgres = \"/nix/store/...\", nix = \"/nix/store/...\"}}; keys x86_64, arm64 or their Nix systems."
}

variable "substituters" {
  type        = list(string)
  description = "Binary cache URLs (file://, http://, https://, s3://); the new root reads them from inside the chroot."
}

variable "trusted_public_keys" {
  type        = list(string)
  description = "Keys that sign for the caches, name:base64."
}

variable "collection_tarballs" {
  type        = list(string)
  description = "Galaxy tarballs installed on the surrogate: nixcache.closure (ansible-galaxy collection build) and community.general for the chroot connection (ansible-galaxy collection download community.general)."
}

# -- the image ------------------------------------------------------------------------------

variable "architecture" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64: the surrogate's and the image's architecture (a chroot runs the surrogate's own kind of programs)."
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "The architecture must be x86_64 or arm64."
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "suite" {
  type        = string
  default     = "bookworm"
  description = "The Debian release debootstrap puts on the volume."
}

variable "mirror" {
  type    = string
  default = "http://deb.debian.org/debian"
}

variable "volume_size" {
  type        = number
  default     = 10
  description = "The image's root volume, GiB."
}

variable "volume_type" {
  type    = string
  default = "gp3"
}

variable "ami_name_prefix" {
  type    = string
  default = "nixcache-postgres-onestage"
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Further tags for the AMI, its snapshot, the surrogate and its volumes."
}

variable "encrypt_volume" {
  type        = bool
  default     = true
  description = "Encrypt the volume (and so the AMI's snapshot)."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for encrypt_volume; empty: the account's default EBS key."
}

variable "optimise_store" {
  type        = bool
  default     = true
  description = "Hard-link identical files in the image's store as the roles fill it (/nix/store/.links, as nix-store --optimise does), and set auto-optimise-store in nix.conf: smaller snapshots."
}

# -- where the results go -------------------------------------------------------------------

variable "manifest_path" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where the manifest post-processor records the AMI."
}

variable "artifacts_dir" {
  type        = string
  default     = ""
  description = "Where the image's artifacts are downloaded, as <artifacts_dir>/<architecture>/receipts/ and sbom/; empty: the manifest's directory."
}

variable "sbom_timestamp" {
  type        = string
  default     = ""
  description = "The time written into the image's SBOM (UTC such as 2026-01-31T00:00:00Z, or seconds since 1970), for documents that the same pins always reproduce; empty: the time of the build."
}

# -- the surrogate --------------------------------------------------------------------------

variable "surrogate_ami" {
  type        = string
  default     = ""
  description = "AMI id of the surrogate; empty: the newest official Debian 12 image of the architecture."
}

variable "surrogate_ami_owner" {
  type    = string
  default = "136693071363"
}

variable "surrogate_ssh_username" {
  type    = string
  default = "admin"
}

variable "surrogate_root_device" {
  type    = string
  default = "/dev/xvda"
}

variable "instance_types" {
  type        = map(string)
  default     = {}
  description = "Surrogate instance type by architecture; unset ones are c6i.large (x86_64) and c7g.large (arm64)."
}

variable "volume_device" {
  type        = string
  default     = "/dev/xvdf"
  description = "Where the build volume is attached to the surrogate (the script finds its NVMe name)."
}

variable "ansible_dir" {
  type        = string
  default     = "/opt/nixcache-ansible"
  description = "A Python virtual environment on the surrogate with ansible-core; made (from PyPI) when it lacks ansible-playbook."
}

variable "ansible_core" {
  type        = string
  default     = "ansible-core>=2.15"
  description = "What pip installs into ansible_dir."
}

variable "iam_instance_profile" {
  type        = string
  default     = ""
  description = "Instance profile of the surrogate, e.g. one that may read an s3:// cache (the chroot shares its network)."
}

variable "subnet_id" {
  type    = string
  default = ""
}

variable "temporary_security_group_source_cidrs" {
  type    = list(string)
  default = []
}

# -- test hooks: the defaults build against real AWS --------------------------------------

variable "ec2_endpoint" {
  type    = string
  default = ""
}

variable "ssh_host" {
  type    = string
  default = ""
}

variable "ssh_port" {
  type    = number
  default = 22
}

variable "ssh_keypair_name" {
  type    = string
  default = ""
}

variable "ssh_private_key_file" {
  type    = string
  default = ""
}

variable "volume_path" {
  type        = string
  default     = ""
  description = "Build on this device or image file of the surrogate instead of volume_device."
}

variable "mount_point" {
  type    = string
  default = "/mnt"
}

variable "rootfs" {
  type        = string
  default     = "debootstrap"
  description = "debootstrap, or a root file system tarball on the surrogate to unpack instead."
}

variable "boot_script" {
  type        = bool
  default     = true
  description = "Make the new root bootable (packer/scripts/chroot-boot.sh: kernel, GRUB, cloud-init, sshd)."
}

variable "work_dir" {
  type    = string
  default = "/var/tmp/nixcache-build"
}

variable "execute_command" {
  type        = string
  default     = "sudo -E sh -c '. {{ .EnvVarFile }} && {{ .Path }}'"
  description = "How the surrogate runs the scripts (as root); the settings come in a file of quoted assignments (use_env_var_file)."
}

locals {
  systems = { x86_64 = "x86_64-linux", arm64 = "aarch64-linux" }
  system  = local.systems[var.architecture]
  # This architecture's pins, by its own name or else its Nix system's.
  has_pins       = contains(keys(var.pins), var.architecture) || contains(keys(var.pins), local.system)
  pin            = contains(keys(var.pins), var.architecture) ? var.pins[var.architecture] : lookup(var.pins, local.system, { postgres = "" })
  postgres       = lookup(local.pin, "postgres", "")
  hash           = substr(basename(local.postgres), 0, 32)
  build_time     = formatdate("YYYYMMDD'T'hhmmss'Z'", timestamp())
  ami_name       = "${var.ami_name_prefix}-${var.architecture}-${local.hash}-${local.build_time}"
  local_ec2      = var.ec2_endpoint != ""
  instance_types = { x86_64 = "c6i.large", arm64 = "c7g.large" }
  collections    = "${var.work_dir}/tarballs"
  tags = merge(var.tags, { for name, path in local.pin : "nixcache:pin:${name}" => path }, {
    Name                    = local.ami_name
    "nixcache:store"        = local.postgres
    "nixcache:hash"         = local.hash
    "nixcache:architecture" = var.architecture
    "nixcache:system"       = local.system
    "nixcache:built"        = local.build_time
    "nixcache:pipeline"     = "one-stage"
  })
  playbook_vars = {
    postgres_store_path = local.postgres
    postgres_packages   = [for name, path in local.pin : path if ! contains(["postgres", "nix"], name)]
    nix_store_path      = lookup(local.pin, "nix", "")
    substituters        = var.substituters
    trusted_public_keys = var.trusted_public_keys
    # the image's SBOM, written by the roles beside the receipts
    postgres_sbom_timestamp  = var.sbom_timestamp
    nix_store_sbom_timestamp = var.sbom_timestamp
    optimise                 = var.optimise_store
  }
  # surrogate-build.sh copies the new root's receipts and SBOM here before it unmounts the
  # volume; the file provisioners download them from here.
  surrogate_artifacts = "${var.work_dir}/artifacts"
  artifacts_dir       = "${var.artifacts_dir != "" ? var.artifacts_dir : dirname(var.manifest_path)}/${var.architecture}"
}

source "amazon-ebssurrogate" "postgres" {
  region        = var.region
  instance_type = lookup(var.instance_types, var.architecture, local.instance_types[var.architecture])
  source_ami    = var.surrogate_ami
  dynamic "source_ami_filter" {
    for_each = var.surrogate_ami == "" ? [var.architecture] : []
    content {
      filters = {
        name                = format("debian-12-%s-*", source_ami_filter.value == "x86_64" ? "amd64" : "arm64")
        architecture        = source_ami_filter.value
        root-device-type    = "ebs"
        virtualization-type = "hvm"
      }
      owners      = [var.surrogate_ami_owner]
      most_recent = true
    }
  }

  # The surrogate's own disk, then the volume that becomes the AMI's root.
  launch_block_device_mappings {
    device_name           = var.surrogate_root_device
    volume_size           = 8
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
    omit_from_artifact    = true
  }
  launch_block_device_mappings {
    device_name           = var.volume_device
    volume_size           = var.volume_size
    volume_type           = var.volume_type
    iops                  = var.volume_type == "gp3" ? 3000 : 0
    throughput            = var.volume_type == "gp3" ? 125 : 0
    encrypted             = var.encrypt_volume
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }
  ami_root_device {
    source_device_name    = var.volume_device
    device_name           = "/dev/xvda"
    volume_size           = var.volume_size
    volume_type           = var.volume_type
    delete_on_termination = true
  }
  # Without pins the build stops here (Packer 1.6.6 has no way to fail with a message of
  # one's own: file() of a path that is the message does it).
  ami_name                = local.has_pins ? local.ami_name : file("no pins for ${var.architecture}: add pins.${var.architecture} (or pins.${local.system})")
  ami_virtualization_type = "hvm"
  ami_architecture        = var.architecture
  ena_support             = true
  sriov_support           = true
  tags                    = local.tags
  snapshot_tags           = local.tags
  run_tags                = local.tags
  run_volume_tags         = local.tags

  iam_instance_profile                  = var.iam_instance_profile
  subnet_id                             = var.subnet_id
  temporary_security_group_source_cidrs = var.temporary_security_group_source_cidrs

  custom_endpoint_ec2        = var.ec2_endpoint
  skip_region_validation     = local.local_ec2
  skip_credential_validation = local.local_ec2
  skip_metadata_api_check    = local.local_ec2

  communicator         = "ssh"
  ssh_username         = var.surrogate_ssh_username
  ssh_host             = var.ssh_host
  ssh_port             = var.ssh_port
  ssh_keypair_name     = var.ssh_keypair_name
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "10m"
}

build {
  sources = ["source.amazon-ebssurrogate.postgres"]

  # The collections' Galaxy artifacts and the scripts, onto the surrogate.
  provisioner "shell" {
    inline           = ["mkdir -p ${local.collections}", "chmod 0777 ${local.collections}"]
    execute_command  = var.execute_command
    use_env_var_file = true
  }
  provisioner "file" {
    sources     = var.collection_tarballs
    destination = "${local.collections}/"
  }
  provisioner "file" {
    source      = "${path.root}/scripts/chroot-boot.sh"
    destination = "${local.collections}/chroot-boot.sh"
  }

  # What the build needs on the surrogate: partitioning tools, debootstrap, ansible-core.
  provisioner "shell" {
    script           = "${path.root}/scripts/surrogate-tools.sh"
    execute_command  = var.execute_command
    use_env_var_file = true
    environment_vars = ["NIXCACHE_ANSIBLE_DIR=${var.ansible_dir}", "NIXCACHE_ANSIBLE_CORE=${var.ansible_core}"]
  }

  provisioner "shell" {
    script           = "${path.root}/scripts/surrogate-build.sh"
    execute_command  = var.execute_command
    use_env_var_file = true
    environment_vars = [
      "NIXCACHE_VOLUME=${var.volume_path != "" ? var.volume_path : var.volume_device}",
      "NIXCACHE_MOUNT=${var.mount_point}",
      "NIXCACHE_ROOTFS=${var.rootfs}",
      "NIXCACHE_SUITE=${var.suite}",
      "NIXCACHE_MIRROR=${var.mirror}",
      "NIXCACHE_BOOT=${var.boot_script ? "${local.collections}/chroot-boot.sh" : ""}",
      "NIXCACHE_COLLECTIONS=${join(" ", [for tarball in var.collection_tarballs : "${local.collections}/${basename(tarball)}"])}",
      "NIXCACHE_EXTRA_VARS_JSON=${jsonencode(local.playbook_vars)}",
      "NIXCACHE_WORK=${var.work_dir}",
      "NIXCACHE_ARTIFACTS=${local.surrogate_artifacts}",
      "ANSIBLE_PLAYBOOK=${var.ansible_dir}/bin/ansible-playbook",
      "ANSIBLE_GALAXY=${var.ansible_dir}/bin/ansible-galaxy",
    ]
  }

  # The receipts written by realise (closure, hashes, signatures, source caches) and the
  # image's SBOM (image.cdx.json, image.spdx.json), as the script copied them out of the new
  # root: to <artifacts_dir>/<architecture>/receipts/ and sbom/.
  provisioner "file" {
    direction   = "download"
    source      = "${local.surrogate_artifacts}/receipts/"
    destination = "${local.artifacts_dir}/"
  }
  provisioner "file" {
    direction   = "download"
    source      = "${local.surrogate_artifacts}/sbom/"
    destination = "${local.artifacts_dir}/"
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      pipeline            = "one-stage"
      architecture        = var.architecture
      nix_system          = local.system
      postgres_store_path = local.postgres
      nix_store_path      = lookup(local.pin, "nix", "")
      closure_hash        = local.hash
      receipts            = "${local.artifacts_dir}/receipts"
      sbom                = "${local.artifacts_dir}/sbom"
    }
  }
}
