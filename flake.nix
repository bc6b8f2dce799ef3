{
  description = "valhalla: one subscription URL per user, merged from several VPN panels";

  inputs = {
    # nixos-25.11 ships rustc 1.91, the workspace's rust-version.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    # v0.23.4 is the last crane release that supports nixpkgs 25.11.
    crane.url = "github:ipetkov/crane/v0.23.4";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      flake-utils,
    }:
    let
      # The image, the test check and the NixOS module are Linux-only; the package, the
      # app, the shell and the lint checks also build on macOS.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      perSystem =
        system:
        let
          pkgs = import nixpkgs {
            inherit system;
            config = { };
            overlays = [ ];
          };
          inherit (pkgs) lib;

          workspace = pkgs.callPackage ./nix/workspace.nix {
            craneLib = crane.mkLib pkgs;
            root = ./.;
          };
          valhalla = pkgs.callPackage ./nix/package.nix { inherit workspace; };
          loadtest = pkgs.callPackage ./nix/loadtest.nix { inherit workspace; };
          image =
            if pkgs.stdenv.hostPlatform.isLinux then
              pkgs.callPackage ./nix/image.nix { inherit valhalla; }
            else
              null;
          checks = pkgs.callPackages ./nix/checks.nix {
            inherit
              workspace
              valhalla
              loadtest
              image
              ;
            module = self.nixosModules.default;
          };
        in
        {
          packages = {
            default = valhalla;
            inherit valhalla loadtest;
          }
          // lib.optionalAttrs (image != null) { inherit image; };

          apps = {
            default = {
              type = "app";
              program = lib.getExe valhalla;
              meta.description = "Run the valhalla server (configured through the environment)";
            };
            loadtest = {
              type = "app";
              program = lib.getExe loadtest;
              meta.description = "Run the valhalla load generator";
            };
          };

          inherit checks;

          devShells.default = pkgs.callPackage ./nix/shell.nix { inherit workspace valhalla; };

          formatter = pkgs.nixfmt-tree;
        };
    in
    flake-utils.lib.eachSystem systems perSystem
    // {
      nixosModules.default = import ./nix/module.nix { inherit (self) packages; };
    };
}
