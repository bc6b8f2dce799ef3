{
  description = "STAND-IN for nixpkgs in the offline checks (scripts/check-nix); not nixpkgs";

  outputs =
    { self }:
    {
      lib = import ./lib.nix;
    };
}
