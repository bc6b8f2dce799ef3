# The server: the `valhalla` binary (serve, `migrate`, `healthcheck`).
{ lib, workspace }:
workspace.craneLib.buildPackage (
  workspace.commonArgs
  // {
    pname = "valhalla";
    inherit (workspace) cargoArtifacts;
    cargoExtraArgs = "--locked -p valhalla";

    # The test suite needs a database and a browser; it runs once, in the `tests` check,
    # rather than in every package build.
    doCheck = false;

    meta = {
      description = "One subscription URL per user, merged from several VPN panels";
      homepage = "https://github.com/valhalla-sub/valhalla";
      license = lib.licenses.mit;
      mainProgram = "valhalla";
      platforms = lib.platforms.linux ++ lib.platforms.darwin;
    };
  }
)
