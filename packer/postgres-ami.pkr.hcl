# An AMI with PostgreSQL realised from a Nix binary cache by the nixcache.closure roles.
#
# Written for the HCL2 subset of Packer 1.6.6 (Debian 12's packer), which has the amazon
# builders and the ansible provisioner built in: no required_plugins, no data sources.
# Modern Packer needs the plugins first: see plugins.pkr.hcl.example and README.md.
#
#   packer build -var region=eu-west-1 \
#     -var postgres_store_path=/nix/store/<hash>-postgresql-and-plugins-15.8 \
#     -var 'substituters=["https://cache.example.org"]' \
#     -var 'trusted_public_keys=["cache.example.org-1:..."]' \
#     packer/postgres-ami.pkr.hcl

# -- the image ------------------------------------------------------------------------------

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region to build in."
}

variable "source_ami" {
  type        = string
  default     = ""
  description = "AMI id to start from; empty: the newest image matching source_ami_name and source_ami_owner."
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name pattern of the source AMI when source_ami is empty."
}

variable "source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Owner of the source AMI when source_ami is empty (Debian's cloud team)."
}

variable "instance_type" {
  type    = string
  default = "t3.medium"
}

variable "ssh_username" {
  type        = string
  default     = "admin"
  description = "Login user of the source AMI (admin on Debian's images)."
}

variable "ami_name_prefix" {
  type    = string
  default = "nixcache-postgres"
}

variable "volume_size" {
  type        = number
  default     = 10
  description = "Root volume size in GiB."
}

variable "root_device_name" {
  type        = string
  default     = "/dev/xvda"
  description = "Root device of the source AMI (/dev/xvda on Debian's images)."
}

variable "manifest_path" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where the manifest post-processor writes the build's receipt (AMI id)."
}

# -- what goes on it ------------------------------------------------------------------------

variable "postgres_store_path" {
  type        = string
  description = "The Postgres environment to install, /nix/store/<32-char hash>-<name>."
}

variable "postgres_packages" {
  type        = list(string)
  default     = []
  description = "Further store paths for the postgres user's profile (pg_prove, groonga, ...), merged with postgres_store_path in one generation."
}

variable "substituters" {
  type        = list(string)
  description = "Binary cache URLs the closure is realised from."
}

variable "trusted_public_keys" {
  type        = list(string)
  description = "Keys (name:base64) trusted to sign for the caches."
}

variable "nix_store_path" {
  type        = string
  default     = ""
  description = "A Nix build to realise and make the default profile too; empty: no Nix on the image."
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

variable "ssh_port" {
  type    = number
  default = 22
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
  # 20240131T120000Z: sortable, and only characters an AMI name allows.
  build_time   = formatdate("YYYYMMDD'T'hhmmss'Z'", timestamp())
  closure_hash = substr(basename(var.postgres_store_path), 0, 32)
  ami_name     = "${var.ami_name_prefix}-${local.closure_hash}-${local.build_time}"
  local_ec2    = var.ec2_endpoint != ""

  galaxy_file     = var.galaxy_file != "" ? var.galaxy_file : "${path.root}/requirements.yml"
  collections_dir = var.collections_dir != "" ? var.collections_dir : "${path.root}/../build/packer/collections"

  tags = {
    Name                = local.ami_name
    "nixcache:store"    = var.postgres_store_path
    "nixcache:hash"     = local.closure_hash
    "nixcache:built"    = local.build_time
    "nixcache:playbook" = "playbooks/postgres.yml"
  }

  playbook_vars = {
    postgres_store_path = var.postgres_store_path
    postgres_packages   = var.postgres_packages
    substituters        = var.substituters
    trusted_public_keys = var.trusted_public_keys
    nix_store_path      = var.nix_store_path
  }
}

source "amazon-ebs" "postgres" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = local.ami_name
  source_ami    = var.source_ami

  dynamic "source_ami_filter" {
    for_each = var.source_ami == "" ? [var.source_ami_name] : []
    content {
      filters = {
        name                = source_ami_filter.value
        architecture        = "x86_64"
        root-device-type    = "ebs"
        virtualization-type = "hvm"
      }
      owners      = [var.source_ami_owner]
      most_recent = true
    }
  }

  launch_block_device_mappings {
    device_name           = var.root_device_name
    volume_size           = var.volume_size
    volume_type           = "gp2"
    delete_on_termination = true
  }

  custom_endpoint_ec2        = var.ec2_endpoint
  skip_region_validation     = local.local_ec2
  skip_credential_validation = local.local_ec2
  skip_metadata_api_check    = local.local_ec2

  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_host             = var.ssh_host
  ssh_port             = var.ssh_port
  ssh_keypair_name     = var.ssh_keypair_name
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "10m"

  tags          = local.tags
  run_tags      = local.tags
  snapshot_tags = local.tags
}

build {
  sources = ["source.amazon-ebs.postgres"]

  provisioner "ansible" {
    playbook_file        = "${path.root}/../playbooks/postgres.yml"
    galaxy_file          = local.galaxy_file
    galaxy_force_install = true
    collections_path     = local.collections_dir
    use_proxy            = false
    user                 = var.ssh_username
    ansible_env_vars = [
      "ANSIBLE_COLLECTIONS_PATH=${local.collections_dir}",
      "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=False",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_PYTHON_INTERPRETER=auto_silent",
      "ANSIBLE_NOCOLOR=1",
    ]
    extra_arguments = ["--extra-vars", jsonencode(local.playbook_vars)]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      postgres_store_path = var.postgres_store_path
      closure_hash        = local.closure_hash
    }
  }
}
