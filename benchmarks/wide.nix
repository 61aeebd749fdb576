# A closure for the benchmark made of real binary files of this machine (libraries,
# programs, JARs), listed by benchmarks/run.py in `listFile` (JSON: one list of absolute
# file paths per leaf): one leaf per list and a top path referring to every leaf.  Every
# tenth leaf starts a chain: leaf i refers to leaf i-1 inside its group of ten, so the
# closure has some depth.  `name` tells closures apart (the wide one: about 300 leaves of
# about 1 MiB; the large-NAR one: a single leaf of a few hundred MiB).
{ listFile, name ? "wide" }:
let
  groups = builtins.fromJSON (builtins.readFile listFile);
  count = builtins.length groups;
  mk = name: attrs: script: builtins.derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ("set -eu\n" + script) ];
  } // attrs);
  leaf = i:
    let previous = if i - (i / 10) * 10 == 0 then "" else "${leaf (i - 1)}";
    in mk "${name}-leaf-${toString i}" {
      files = builtins.concatStringsSep "\n" (builtins.elemAt groups i) + "\n";
      passAsFile = [ "files" ];
    } ''
      mkdir -p $out/files
      n=0
      while IFS= read -r f; do
        n=$((n + 1))
        cp "$f" "$out/files/$n-''${f##*/}"
      done < "$filesPath"
      printf '%s\n' "${previous}" > $out/previous
    '';
  leaves = builtins.genList leaf count;
in mk "${name}-top" { } ''
  mkdir -p $out
  printf '%s\n' ${builtins.concatStringsSep " " (map toString leaves)} > $out/leaves
''
