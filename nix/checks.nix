# What `nix flake check` builds: the package, clippy, rustfmt, the test suite against a
# MariaDB started inside the build sandbox, and, on Linux, the image and the NixOS module.
{
  lib,
  stdenv,
  linkFarm,
  nixos,
  mariadb,
  chromium,
  workspace,
  valhalla,
  loadtest,
  image ? null,
  module,
}:
let
  inherit (workspace) craneLib commonArgs cargoArtifacts;

  # The unit file the module writes for one configuration.
  unitFor =
    configuration:
    let
      system = nixos {
        imports = [
          module
          configuration
        ];
        system.stateVersion = "25.11";
      };
    in
    "${system.config.systemd.units."valhalla.service".unit}/valhalla.service";
in
{
  inherit valhalla loadtest;

  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    }
  );

  fmt = craneLib.cargoFmt {
    inherit (commonArgs) src pname version;
  };
}
// lib.optionalAttrs stdenv.hostPlatform.isLinux {
  # The integration tests need a real MariaDB on 127.0.0.1:3306 (root, no password) and
  # Chromium for the status-page tests. The sandbox has its own network namespace, so
  # the port is always free there. Chromium is Linux-only in nixpkgs, hence this check
  # is too.
  tests = craneLib.cargoTest (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoTestExtraArgs = "--workspace --no-fail-fast";
      doInstallCargoArtifacts = false;
      nativeCheckInputs = [ mariadb ];

      VALHALLA_CHROMIUM = "${chromium}/bin/chromium";
      VALHALLA_TEST_MYSQL = "mysql://root@127.0.0.1:3306";

      preCheck = ''
        # The sandbox's HOME does not exist; Chromium and MariaDB both want one.
        export HOME="$TMPDIR"
        bash ${./test-mariadb.sh} start "$TMPDIR/mariadb" 3306
      '';
      postCheck = ''
        bash ${./test-mariadb.sh} stop "$TMPDIR/mariadb"
      '';
    }
  );

  inherit image;

  # Evaluates the module with the real NixOS module system and writes the unit files of
  # two configurations: the smallest one, and one with every secret and a local database.
  nixos-module = linkFarm "valhalla-nixos-module" [
    {
      name = "minimal.service";
      path = unitFor { services.valhalla.enable = true; };
    }
    {
      name = "full.service";
      path = unitFor {
        services.valhalla = {
          enable = true;
          openFirewall = true;
          passwordFile = "/run/secrets/valhalla-mysql-password";
          environmentFile = "/run/secrets/valhalla.env";
          tls = {
            certificateFile = "/var/lib/acme/sub.example.com/fullchain.pem";
            keyFile = "/var/lib/acme/sub.example.com/key.pem";
          };
          database.createLocally = true;
          settings = {
            FLASK_PORT = 443;
            ADMIN_IDS = [
              111
              222
            ];
            LOG_FORMAT = "json";
            PUBLIC_BASE_URL = "https://sub.example.com";
          };
        };
      };
    }
  ];
}
