# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    """Options shared by everything that reads a Nix binary cache."""

    DOCUMENTATION = r'''
options:
  substituters:
    description:
      - Binary cache URLs, asked in this order for every store path.
      - When empty and O(use_nix_conf) is on, the C(substituters) (and C(extra-substituters))
        of the host's C(/etc/nix/nix.conf) are used.
      - C(file:///dir) reads a cache written by C(nix copy --to file:///dir).
      - C(http://host/prefix) and C(https://host/prefix) read a cache served over HTTP(S).
        C(https://user:password@host/prefix) authenticates with basic auth; the password is
        shown as C(********) everywhere.
      - C(s3://bucket?region=eu-west-1&profile=name&endpoint=host:port&scheme=https) reads a cache
        in an S3 bucket (or an S3-compatible server) as Nix does, with boto3 and the standard AWS
        credential chain (environment, profile, instance profile). A public bucket can also be
        read anonymously as C(https://BUCKET.s3.amazonaws.com).
      - Each cache's C(nix-cache-info) is read once per run; a cache for another store directory
        is refused. Caches taken from C(nix.conf) are ordered by their C(Priority), as Nix does.
      - A cache that stops answering is skipped for the rest of the run; paths it was serving are
        taken from the next cache that has them.
    type: list
    elements: str
    default: []
  trusted_public_keys:
    description:
      - Public keys whose signatures make a path trusted, as in C(nix.conf), for example
        C(cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=).
      - A key that does not parse (wrong length, a stray character) fails the task and is named.
      - When empty and O(use_nix_conf) is on, the C(trusted-public-keys) of the host's
        C(/etc/nix/nix.conf) are used.
    type: list
    elements: str
    default: []
  require_sigs:
    description:
      - Refuse any path that carries no signature by one of O(trusted_public_keys).
      - Turn this off only for caches you control end to end; the NAR hash is checked either way.
    type: bool
    default: true
  timeout:
    description:
      - Seconds one request attempt may last in total, from connecting to the last byte, however
        slowly the cache sends. A NAR download attempt may also take NarSize at 256 KiB/s on
        top, as long as every O(timeout) seconds bring at least 1 KiB/s.
      - A NAR download cut off by the deadline resumes where it stopped, within O(retries).
    type: int
    default: 30
  retries:
    description:
      - How many times to retry a request that failed for a transient reason (connection refused
        or reset, time-out, HTTP 5xx), with exponential back-off and jitter.
    type: int
    default: 3
  throttle_timeout:
    description:
      - Seconds one request may keep being asked again while the cache throttles it (HTTP 429,
        an HTTP 503 with C(Retry-After), or S3's C(SlowDown)). These answers do not count against
        O(retries).
      - Each wait is the one the cache names in C(Retry-After) (seconds or an HTTP date), else an
        exponential back-off with jitter of at most 15 s.
      - A request still throttled when the next wait would end after this many seconds, or whose
        C(Retry-After) asks for longer, fails the task naming the cache, the answer and the waits;
        realise on fewer hosts at once (C(forks), C(serial)) or put a CDN in front of the cache.
    type: int
    default: 120
    version_added: 0.2.0
  validate_certs:
    description: Verify the TLS certificates of C(https://) caches.
    type: bool
    default: true
  use_nix_conf:
    description:
      - Fill O(substituters) and O(trusted_public_keys), when they are empty, from
        C(/etc/nix/nix.conf) (under O(ignore:root) for the module), following its
        C(include), C(!include) and C(extra-) settings as Nix does.
    type: bool
    default: true
  url_username:
    description: User name for HTTP basic authentication to the caches.
    type: str
  url_password:
    description: Password for HTTP basic authentication to the caches.
    type: str
  bearer_token:
    description: A token sent in an C(Authorization) header (C(Bearer TOKEN)) to the caches.
    type: str
  netrc_file:
    description:
      - A netrc file with credentials per cache host (C(machine HOST login USER password PASS)).
      - Defaults to the C(netrc-file) setting of C(nix.conf), else C(/etc/nix/netrc), as for Nix.
      - Used for a cache only when neither O(url_username) nor O(bearer_token) is set.
    type: path
  client_cert:
    description: A PEM client certificate (and key, unless O(client_key) is set) for TLS.
    type: path
  client_key:
    description: The PEM private key of O(client_cert).
    type: path
  ca_path:
    description: A PEM bundle of certificate authorities to trust instead of the system's.
    type: path
  use_proxy:
    description: Use the proxy named by the C(http_proxy), C(https_proxy) and C(no_proxy) variables.
    type: bool
    default: true
  aws_profile:
    description:
      - The AWS profile for C(s3://) caches; a C(profile=) parameter in the URL wins.
      - Without a profile or keys, boto3's credential chain applies (C(AWS_*) environment
        variables, C(AWS_PROFILE), the instance profile).
    type: str
    aliases: [profile]
  aws_region:
    description: The AWS region of C(s3://) caches; a C(region=) parameter in the URL wins.
    type: str
    aliases: [region]
  endpoint_url:
    description: An S3-compatible endpoint for C(s3://) caches; an C(endpoint=) parameter in the URL wins.
    type: str
    aliases: [aws_endpoint_url]
  access_key:
    description: AWS access key id for C(s3://) caches (else C(AWS_ACCESS_KEY_ID) and the chain).
    type: str
    aliases: [aws_access_key_id, aws_access_key]
  secret_key:
    description: AWS secret access key for C(s3://) caches (else C(AWS_SECRET_ACCESS_KEY) and the chain).
    type: str
    aliases: [aws_secret_access_key, aws_secret_key]
  session_token:
    description: AWS session token for temporary credentials (else C(AWS_SESSION_TOKEN)).
    type: str
    aliases: [aws_session_token]
'''

    # The lookups (controller plugins) also read the cache options from play variables and
    # the environment; modules get them from module_defaults instead.
    PLUGINS = r'''
requirements:
  - boto3, on the controller, for C(s3://) caches
notes:
  - Each cache option can also be set for all the lookups of a play with a play or host variable
    named C(nixcache_) and the option's name, for example C(nixcache_substituters), or with an
    environment variable of the controller named C(NIXCACHE_) and the option's name in capitals,
    for example C(NIXCACHE_SUBSTITUTERS) (a list is separated by commas). The S3 options have no
    environment variable of their own; boto3 reads the C(AWS_*) variables itself.
  - A keyword given to the lookup wins over the variable, which wins over the environment.
  - C(module_defaults) do not apply to lookups.
options:
  substituters:
    vars:
      - name: nixcache_substituters
    env:
      - name: NIXCACHE_SUBSTITUTERS
  trusted_public_keys:
    vars:
      - name: nixcache_trusted_public_keys
    env:
      - name: NIXCACHE_TRUSTED_PUBLIC_KEYS
  require_sigs:
    vars:
      - name: nixcache_require_sigs
    env:
      - name: NIXCACHE_REQUIRE_SIGS
  timeout:
    vars:
      - name: nixcache_timeout
    env:
      - name: NIXCACHE_TIMEOUT
  retries:
    vars:
      - name: nixcache_retries
    env:
      - name: NIXCACHE_RETRIES
  throttle_timeout:
    vars:
      - name: nixcache_throttle_timeout
    env:
      - name: NIXCACHE_THROTTLE_TIMEOUT
  validate_certs:
    vars:
      - name: nixcache_validate_certs
    env:
      - name: NIXCACHE_VALIDATE_CERTS
  use_nix_conf:
    vars:
      - name: nixcache_use_nix_conf
    env:
      - name: NIXCACHE_USE_NIX_CONF
  url_username:
    vars:
      - name: nixcache_url_username
    env:
      - name: NIXCACHE_URL_USERNAME
  url_password:
    vars:
      - name: nixcache_url_password
    env:
      - name: NIXCACHE_URL_PASSWORD
  bearer_token:
    vars:
      - name: nixcache_bearer_token
    env:
      - name: NIXCACHE_BEARER_TOKEN
  netrc_file:
    vars:
      - name: nixcache_netrc_file
    env:
      - name: NIXCACHE_NETRC_FILE
  client_cert:
    vars:
      - name: nixcache_client_cert
    env:
      - name: NIXCACHE_CLIENT_CERT
  client_key:
    vars:
      - name: nixcache_client_key
    env:
      - name: NIXCACHE_CLIENT_KEY
  ca_path:
    vars:
      - name: nixcache_ca_path
    env:
      - name: NIXCACHE_CA_PATH
  use_proxy:
    vars:
      - name: nixcache_use_proxy
    env:
      - name: NIXCACHE_USE_PROXY
  aws_profile:
    vars:
      - name: nixcache_aws_profile
  aws_region:
    vars:
      - name: nixcache_aws_region
  endpoint_url:
    vars:
      - name: nixcache_endpoint_url
  access_key:
    vars:
      - name: nixcache_access_key
  secret_key:
    vars:
      - name: nixcache_secret_key
  session_token:
    vars:
      - name: nixcache_session_token
'''
