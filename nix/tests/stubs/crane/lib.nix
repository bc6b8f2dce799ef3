# STAND-IN for crane's mkLib, for the offline checks only: the functions the flake calls,
# with crane's argument names and derivation names, building placeholders.
pkgs:
let
  inherit (pkgs) lib;

  required =
    function: names: arguments:
    let
      missing = builtins.filter (name: !(arguments ? ${name})) names;
    in
    if missing == [ ] then
      arguments
    else
      throw "stand-in crane ${function}: missing ${builtins.concatStringsSep ", " missing}";

  cargoDerivation =
    suffix: arguments:
    pkgs.stdenv.mkDerivation (
      arguments
      // {
        pname = "${arguments.pname}${suffix}";
        nativeBuildInputs = (arguments.nativeBuildInputs or [ ]) ++ [
          pkgs.cargo
          pkgs.rustc
        ];
      }
    );
in
{
  buildDepsOnly =
    arguments:
    cargoDerivation "-deps" (
      required "buildDepsOnly" [
        "src"
        "pname"
        "version"
      ] arguments
    );

  buildPackage =
    arguments:
    cargoDerivation "" (
      required "buildPackage" [
        "src"
        "pname"
        "version"
        "cargoArtifacts"
      ] arguments
    );

  cargoClippy =
    arguments:
    cargoDerivation "-clippy" (
      required "cargoClippy" [
        "src"
        "pname"
        "version"
        "cargoArtifacts"
      ] arguments
      // {
        nativeBuildInputs = (arguments.nativeBuildInputs or [ ]) ++ [ pkgs.clippy ];
      }
    );

  cargoFmt =
    arguments:
    cargoDerivation "-fmt" (
      required "cargoFmt" [
        "src"
        "pname"
        "version"
      ] arguments
      // {
        nativeBuildInputs = [ pkgs.rustfmt ];
      }
    );

  cargoTest =
    arguments:
    cargoDerivation "-test" (
      required "cargoTest" [
        "src"
        "pname"
        "version"
        "cargoArtifacts"
      ] arguments
      // {
        doCheck = arguments.doCheck or true;
      }
    );

  devShell =
    {
      checks ? { },
      inputsFrom ? [ ],
      packages ? [ ],
      ...
    }@arguments:
    pkgs.mkShell (
      removeAttrs arguments [ "checks" ]
      // {
        inputsFrom = builtins.attrValues checks ++ inputsFrom;
        packages = [
          pkgs.rustc
          pkgs.cargo
          pkgs.clippy
          pkgs.rustfmt
        ]
        ++ packages;
      }
    );
}
