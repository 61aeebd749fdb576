"""Vectors produced by real Nix (Debian's nix-bin 2.8), kept here so unit tests need no Nix.

``NARINFO`` was written by ``nix copy --to file://...?compression=xz`` and signed with
``nix store sign`` using the key pair below (``nix-store --generate-binary-cache-key``).
``BASE32`` pairs come from ``nix-hash --type sha256 --to-base32``.
"""

PUBLIC_KEY = 'nixtest-trusted-1:E9pqMBjVHvihj6Qf///3KL9XtOc+nrPL3MPDVpKCFnk='
SECRET_KEY = ('nixtest-trusted-1:bdfEOlj56KTIbqTMAhSbzF1ot9Lt2T/LZlS6OPxdYwAT2mowGNUe+KGPpB'
              '////cov1e05z6es8vcw8NWkoIWeQ==')
OTHER_PUBLIC_KEY = 'nixtest-untrusted-1:nPcLF7HEHdfRT2zVsYF4ggtUKRRWRW/Xt9ujer31ryI='

NARINFO = """\
StorePath: /nix/store/pbwxn9xhigdm89rg5pl56h36qncc8nyr-small-env-1.0
URL: nar/0lbp9jyg818km7p2rvy6msg0m8d996vx5m8879qr16azgycgrn4s.nar.xz
Compression: xz
FileHash: sha256:0lbp9jyg818km7p2rvy6msg0m8d996vx5m8879qr16azgycgrn4s
FileSize: 508
NarHash: sha256:1j27zjmk1yvxg7fbsblplf3xmsggn89xmgy6n83hg59wihp24ybq
NarSize: 2112
References: 6kqh15imzvq0zydhzq4jshznv0lv50q8-small-link-1.0 \
b8krlrnn36zanmgn18d92dcflxa93vdw-small-tool-1.0 pbwxn9xhigdm89rg5pl56h36qncc8nyr-small-env-1.0 \
s6v8gkgsn9v5ad2v4kalxl4ghs0hcvyz-small-lib-1.0 vq3as72cn7nlfp00fksafsqpbc1wr00k-small-note-1.0
Deriver: w6llx9aw9nzdd7vw08rrc1q3gb0v7s8r-small-env-1.0.drv
Sig: nixtest-trusted-1:YA8UfT4UR4yJThy9pbdwKcNQtYW7AkOO1rIFgYHdrS36qorZZfu2ttAFI8HQdKcf1pBMGnqozkxrIw19vdEzCQ==
"""

FINGERPRINT = (
    '1;/nix/store/pbwxn9xhigdm89rg5pl56h36qncc8nyr-small-env-1.0;'
    'sha256:1j27zjmk1yvxg7fbsblplf3xmsggn89xmgy6n83hg59wihp24ybq;2112;'
    '/nix/store/6kqh15imzvq0zydhzq4jshznv0lv50q8-small-link-1.0,'
    '/nix/store/b8krlrnn36zanmgn18d92dcflxa93vdw-small-tool-1.0,'
    '/nix/store/pbwxn9xhigdm89rg5pl56h36qncc8nyr-small-env-1.0,'
    '/nix/store/s6v8gkgsn9v5ad2v4kalxl4ghs0hcvyz-small-lib-1.0,'
    '/nix/store/vq3as72cn7nlfp00fksafsqpbc1wr00k-small-note-1.0'
).encode('ascii')

# (base16, Nix base32) of sha256 digests.
BASE32 = [
    ('0' * 64, '0' * 52),
    ('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
     '0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73'),
    ('ff' + '0' * 60 + '01', '008000000000000000000000000000000000000000000000007z'),
]
# A sha1 digest (20 bytes) from `nix-hash --type sha1 --to-base32`.
BASE32_SHA1 = ('0123456789abcdef0123456789abcdef01234567', 'cx2j60ggrnmqjrs54c0yzkdbi5kla8q1')

# A profile made by real `nix profile install` of two packages (Nix 2.8): the NAR hash of
# its symlink tree, its references and the content-addressed store path and ca it got.
PROFILE_NAR_HASH16 = 'b5c9bc8883170073310f59808fc3c88e49e3eaa4b263f64a2fc10af415505406'
PROFILE_REFERENCES = ['/nix/store/hi8589gp90zmkvbmm79awz5fd9hwb59n-pkgb-2.0',
                      '/nix/store/vxygwb7rm97z1rwphvayz2lvq231zxx6-pkga-1.0']
PROFILE_PATH = '/nix/store/k8zgvxazvac8q1db3pp9h07y8hvcqsa0-profile'
PROFILE_CA = 'fixed:r:sha256:01jla0az82n15x5gcqxjlkmf6jcfr31qz02r1wqp600phf4brjdm'
