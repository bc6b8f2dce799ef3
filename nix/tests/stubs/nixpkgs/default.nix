# STAND-IN for `import nixpkgs { ... }`, for the offline checks only. Every package is a
# placeholder derivation that cannot do anything; the attributes a caller passed are kept
# on it so the checks can read them back.
{
  system,
  config ? { },
  overlays ? [ ],
}:
assert config == { };
assert overlays == [ ];
let
  lib = import ./lib.nix;

  isLinux = builtins.elem system lib.platforms.linux;

  # Forcing the JSON of a derivation's arguments evaluates every string, path and
  # package in them, as instantiating the real derivation would.
  argumentsJson =
    arguments:
    builtins.toJSON (
      lib.filterAttrs (_: value: !(builtins.isFunction value)) (
        removeAttrs arguments [
          "passthru"
          "meta"
        ]
      )
    );

  placeholder =
    name: arguments:
    let
      derivation = builtins.derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          "echo stand-in > $out"
        ];
        standInArguments = argumentsJson arguments;
      };
    in
    arguments
    // (arguments.passthru or { })
    // derivation
    // {
      meta = arguments.meta or { };
      overrideAttrs = change: placeholder name (arguments // change arguments);
    };

  mkDerivation =
    arguments:
    placeholder (
      if arguments ? pname then "${arguments.pname}-${arguments.version}" else arguments.name
    ) arguments;

  package =
    name:
    mkDerivation {
      pname = name;
      version = "0-stand-in";
      meta.mainProgram = name;
    };

  # callPackage fills a function's arguments from this package set and adds `override`
  # to an attribute-set result, as the real one does; callPackages adds it to each
  # attribute of the result instead.
  callWith =
    scope: function: arguments:
    let
      loaded = if builtins.isPath function then import function else function;
      wanted = builtins.functionArgs loaded;
      automatic = builtins.intersectAttrs wanted scope;
      missing = builtins.filter (name: !wanted.${name} && !(automatic ? ${name} || arguments ? ${name})) (
        builtins.attrNames wanted
      );
    in
    if missing == [ ] then
      loaded (automatic // arguments)
    else
      throw "stand-in callPackage: no value for ${builtins.concatStringsSep ", " missing}";

  callPackageWith =
    scope: function: arguments:
    let
      result = callWith scope function arguments;
    in
    if builtins.isAttrs result then
      result // { override = newArguments: callPackageWith scope function (arguments // newArguments); }
    else
      result;

  callPackagesWith =
    scope: function: arguments:
    builtins.mapAttrs (
      name: value:
      if builtins.isAttrs value then
        value
        // {
          override = newArguments: (callPackagesWith scope function (arguments // newArguments)).${name};
        }
      else
        value
    ) (callWith scope function arguments);

  # The NixOS options the flake's module sets, with the real types, and nothing else:
  # a module that sets anything else fails here as it would on NixOS.
  nixosBase = {
    options = {
      assertions = lib.mkOption {
        type = lib.types.listOf (
          lib.types.submodule {
            options = {
              assertion = lib.mkOption { type = lib.types.bool; };
              message = lib.mkOption { type = lib.types.str; };
            };
          }
        );
        default = [ ];
      };
      system.stateVersion = lib.mkOption { type = lib.types.str; };
      users.users = lib.mkOption {
        default = { };
        type = lib.types.attrsOf (
          lib.types.submodule {
            options = {
              isSystemUser = lib.mkOption {
                type = lib.types.bool;
                default = false;
              };
              group = lib.mkOption {
                type = lib.types.str;
                default = "";
              };
              description = lib.mkOption {
                type = lib.types.str;
                default = "";
              };
            };
          }
        );
      };
      users.groups = lib.mkOption {
        default = { };
        type = lib.types.attrsOf (lib.types.submodule { options = { }; });
      };
      networking.firewall.allowedTCPPorts = lib.mkOption {
        type = lib.types.listOf lib.types.port;
        default = [ ];
      };
      services.mysql = {
        enable = lib.mkEnableOption "MySQL";
        package = lib.mkOption { type = lib.types.package; };
        ensureDatabases = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
        };
        ensureUsers = lib.mkOption {
          default = [ ];
          type = lib.types.listOf (
            lib.types.submodule {
              options = {
                name = lib.mkOption { type = lib.types.str; };
                ensurePermissions = lib.mkOption {
                  type = lib.types.attrsOf lib.types.str;
                  default = { };
                };
              };
            }
          );
        };
      };
      systemd.services = lib.mkOption {
        default = { };
        type = lib.types.attrsOf (
          lib.types.submodule {
            options =
              let
                strings = lib.mkOption {
                  type = lib.types.listOf lib.types.str;
                  default = [ ];
                };
                atom = lib.types.oneOf [
                  lib.types.bool
                  lib.types.int
                  lib.types.str
                  lib.types.path
                  lib.types.package
                ];
              in
              {
                description = lib.mkOption {
                  type = lib.types.str;
                  default = "";
                };
                wantedBy = strings;
                wants = strings;
                after = strings;
                requires = strings;
                environment = lib.mkOption {
                  type = lib.types.attrsOf (
                    lib.types.nullOr (
                      lib.types.oneOf [
                        lib.types.str
                        lib.types.path
                        lib.types.package
                      ]
                    )
                  );
                  default = { };
                };
                serviceConfig = lib.mkOption {
                  type = lib.types.attrsOf (
                    lib.types.oneOf [
                      atom
                      (lib.types.listOf atom)
                    ]
                  );
                  default = { };
                };
              };
          }
        );
      };
    };
  };

  # Unit files written from systemd.services, roughly as NixOS writes them.
  renderValue = value: if builtins.isBool value then lib.boolToString value else toString value;
  renderLines =
    name: value:
    map (item: "${name}=${renderValue item}") (if builtins.isList value then value else [ value ]);
  renderUnit =
    service:
    builtins.concatStringsSep "\n" (
      [
        "[Unit]"
        "Description=${service.description}"
      ]
      ++ renderLines "Wants" service.wants
      ++ renderLines "After" service.after
      ++ renderLines "Requires" service.requires
      ++ [ "[Service]" ]
      ++ lib.mapAttrsToList (name: value: "Environment=\"${name}=${value}\"") (
        lib.filterAttrs (_: value: value != null) service.environment
      )
      ++ builtins.concatLists (lib.mapAttrsToList renderLines service.serviceConfig)
      ++ [ "[Install]" ]
      ++ renderLines "WantedBy" service.wantedBy
      ++ [ "" ]
    );

  nixos =
    configuration:
    let
      evaluated = lib.evalModules {
        modules = [
          nixosBase
          configuration
        ];
        specialArgs = {
          inherit lib pkgs;
        };
      };
      inherit (evaluated) config;
      units = lib.mapAttrs' (name: service: {
        name = "${name}.service";
        value.unit = mkDerivation {
          name = "unit-${name}.service";
          text = renderUnit service;
        };
      }) config.systemd.services;
    in
    {
      config = config // {
        systemd = config.systemd // {
          inherit units;
        };
      };
    };

  pkgs = {
    inherit
      lib
      system
      callPackages
      nixos
      ;
    callPackage = callPackageWith pkgs;
    # Chromium is Linux-only in nixpkgs; using it elsewhere fails the same way here.
    chromium = if isLinux then package "chromium" else throw "stand-in: chromium is not available on ${system}";
    stdenv = {
      inherit mkDerivation;
      hostPlatform = {
        inherit system isLinux;
        isDarwin = !isLinux;
      };
    };
    mkShell =
      arguments:
      mkDerivation (
        {
          name = "nix-shell";
        }
        // arguments
      );
    writeShellScript =
      name: text:
      mkDerivation {
        inherit name text;
      };
    writeShellApplication =
      {
        name,
        text,
        runtimeInputs ? [ ],
      }:
      mkDerivation {
        inherit name text runtimeInputs;
        meta.mainProgram = name;
      };
    linkFarm =
      name: entries:
      mkDerivation {
        inherit name;
        entries = map (entry: "${entry.name}=${entry.path}") entries;
      };
    dockerTools = {
      caCertificates = package "ca-certificates";
      fakeNss = package "fake-nss" // {
        override =
          {
            extraPasswdLines ? [ ],
            extraGroupLines ? [ ],
          }:
          mkDerivation {
            pname = "fake-nss";
            version = "0-stand-in";
            inherit extraPasswdLines extraGroupLines;
          };
      };
      # Like the real one, the result shows only imageName and imageTag; what the caller
      # passed is readable (stand-in only) as JSON in standInArguments.
      buildLayeredImage =
        {
          name,
          tag ? null,
          compressor ? "gz",
          ...
        }@arguments:
        assert builtins.elem compressor [
          "none"
          "gz"
          "zstd"
        ];
        let
          image = builtins.derivation {
            name = "${name}.tar${if compressor == "none" then "" else ".${compressor}"}";
            inherit system;
            builder = "/bin/sh";
            args = [
              "-c"
              "echo stand-in > $out"
            ];
            standInArguments = argumentsJson arguments;
          };
        in
        image
        // {
          imageName = name;
          imageTag = tag;
        };
    };
  }
  // builtins.listToAttrs (
    map
      (name: {
        inherit name;
        value = package name;
      })
      [
        "cargo"
        "clippy"
        "mariadb"
        "nixfmt-tree"
        "openssl"
        "pkg-config"
        "podman"
        "rust-analyzer"
        "rustc"
        "rustfmt"
        "tzdata"
      ]
  );

  callPackages = callPackagesWith pkgs;
in
pkgs
