# `nix develop`: the pinned Rust toolchain with clippy and rustfmt, the build inputs of the
# package, MariaDB for the tests, podman for the images, and Chromium on Linux.
{
  lib,
  stdenv,
  writeShellApplication,
  mariadb,
  podman,
  chromium,
  rust-analyzer,
  workspace,
  valhalla,
}:
let
  # `test-mariadb start DIR PORT`: the same throwaway database the test check uses.
  test-mariadb = writeShellApplication {
    name = "test-mariadb";
    runtimeInputs = [ mariadb ];
    text = ''exec bash ${./test-mariadb.sh} "$@"'';
  };
in
workspace.craneLib.devShell (
  {
    # pkg-config and OpenSSL come from the package's own inputs.
    inputsFrom = [ valhalla ];
    packages = [
      rust-analyzer
      mariadb
      podman
      test-mariadb
    ]
    ++ lib.optional stdenv.hostPlatform.isLinux chromium;
  }
  // lib.optionalAttrs stdenv.hostPlatform.isLinux {
    VALHALLA_CHROMIUM = "${chromium}/bin/chromium";
  }
)
