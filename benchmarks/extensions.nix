# Several versions of PostgreSQL extensions side by side, as images that keep older
# extension versions for upgrades ship them: each version is its own store path with the
# contrib modules and scripts of the PostgreSQL fixture (tests/fixtures/postgresql.nix),
# most of them identical from one version to the next, plus a control file and a README
# of its own.  `bundle` references them all, so one closure holds PostgreSQL and every
# version.
{ versions ? [ "1.0" "1.1" "1.2" "2.0" ]
}:
let
  postgres = import ../tests/fixtures/postgresql.nix { };

  extension = version: builtins.derivation {
    name = "pg-contrib-extensions-${version}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    inherit postgres version;
    major = "15";
    args = [ "-eu" "-c" ''
      mkdir -p $out/lib $out/share/postgresql/extension $out/share/doc
      cp -a $postgres/lib/postgresql/$major/lib/*.so $out/lib/
      cp -a $postgres/share/postgresql/$major/extension/. $out/share/postgresql/extension/
      printf "comment = 'contrib bundle %s'\ndefault_version = '%s'\n" "$version" "$version" \
        > $out/share/postgresql/extension/contrib_bundle.control
      printf 'contrib extensions, version %s\n' "$version" > $out/share/doc/README
    '' ];
  };

in builtins.derivation {
  name = "pg-extensions-bundle";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  extensions = map extension versions;
  args = [ "-eu" "-c" ''
    mkdir -p $out
    for e in $extensions; do echo "$e" >> $out/extensions; done
  '' ];
}
