# The load generator: the `valhalla-loadtest` binary (goose scenarios, fake panels, sweep).
{ lib, workspace }:
workspace.craneLib.buildPackage (
  workspace.commonArgs
  // {
    pname = "valhalla-loadtest";
    inherit (workspace) cargoArtifacts;
    cargoExtraArgs = "--locked -p valhalla-loadtest";
    doCheck = false;

    meta = {
      description = "Load tests and fake VPN panels for valhalla";
      license = lib.licenses.mit;
      mainProgram = "valhalla-loadtest";
      platforms = lib.platforms.linux ++ lib.platforms.darwin;
    };
  }
)
