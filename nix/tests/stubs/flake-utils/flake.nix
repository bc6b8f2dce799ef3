{
  description = "STAND-IN for flake-utils in the offline checks (scripts/check-nix); not flake-utils";

  outputs =
    { self }:
    {
      # Turns `system -> { name = value; }` into `{ name.${system} = value; }` for each
      # system, as flake-utils' eachSystem does.
      lib.eachSystem =
        systems: perSystem:
        builtins.foldl' (
          outputs: system:
          let
            forSystem = perSystem system;
          in
          builtins.foldl' (
            merged: name:
            merged
            // {
              ${name} = (merged.${name} or { }) // {
                ${system} = forSystem.${name};
              };
            }
          ) outputs (builtins.attrNames forSystem)
        ) { } systems;
    };
}
