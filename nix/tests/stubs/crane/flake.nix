{
  description = "STAND-IN for crane in the offline checks (scripts/check-nix); not crane";

  outputs =
    { self }:
    {
      mkLib = pkgs: import ./lib.nix pkgs;
    };
}
