# The Cargo workspace as crane sees it: the filtered source, the arguments every cargo
# derivation shares, and the dependencies built once for all of them.
{
  lib,
  craneLib,
  pkg-config,
  openssl,
  root,
}:
let
  cargoToml = lib.importTOML (root + "/Cargo.toml");

  # Only what cargo reads: editing docs/, nix/, the README or the container files leaves
  # this source, and so every build below, unchanged. Whole crate directories are kept
  # (not only *.rs) because the crates embed non-Rust files such as page templates.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/rustfmt.toml")
      (root + "/server")
      (root + "/fakepanel")
      (root + "/loadtest")
      (lib.fileset.maybeMissing (root + "/.cargo"))
    ];
  };

  commonArgs = {
    inherit src;
    # A virtual workspace has no package name of its own; name the shared derivations
    # after the project so crane does not fall back to a placeholder.
    pname = "valhalla-workspace";
    inherit (cargoToml.workspace.package) version;
    strictDeps = true;

    # crane's default is "--locked"; it is spelled out because the package derivations
    # replace it and must keep it.
    cargoExtraArgs = "--locked";

    # openssl-sys links the system OpenSSL through pkg-config (native-tls, openssl).
    # The load test's aws-lc-sys compiles its C sources with the stdenv compiler (its cc
    # builder, with pre-generated bindings for these four systems), so it needs neither
    # cmake, Go nor libclang here.
    nativeBuildInputs = [ pkg-config ];
    buildInputs = [ openssl ];
  };
in
{
  inherit craneLib src commonArgs;
  inherit (cargoToml.workspace.package) version;

  # Every workspace dependency, compiled once and reused by the packages, clippy and the
  # tests, so a change to our own code rebuilds only our crates.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;
}
