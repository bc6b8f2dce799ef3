# Offline tests of nix/module.nix, evaluated against the stand-in module system in
# stubs/nixpkgs (scripts/check-nix runs `nix-instantiate --eval --strict` on this file).
# The result is a summary line; a failing case makes the evaluation throw.
let
  pkgs = import ./stubs/nixpkgs { system = "x86_64-linux"; };
  inherit (pkgs) lib;

  package = pkgs.stdenv.mkDerivation {
    pname = "valhalla";
    version = "0.1.0";
    meta.mainProgram = "valhalla";
  };
  module = import ../module.nix { packages.x86_64-linux.default = package; };

  evaluate =
    configuration:
    (pkgs.nixos {
      imports = [
        module
        configuration
      ];
      system.stateVersion = "25.11";
    }).config;

  withValhalla = settings: evaluate { services.valhalla = { enable = true; } // settings; };
  serviceOf = config: config.systemd.services.valhalla;
  failedAssertions =
    config: map (entry: entry.message) (builtins.filter (entry: !entry.assertion) config.assertions);
  throws = value: !(builtins.tryEval (builtins.deepSeq value value)).success;
  contains = needle: haystack: builtins.match ".*${needle}.*" haystack != null;

  minimal = withValhalla { };
  minimalService = serviceOf minimal;

  full = withValhalla {
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
    };
  };
  fullService = serviceOf full;
  fullUnit = full.systemd.units."valhalla.service".unit.text;

  freeform = withValhalla {
    settings = {
      SHUTDOWN_GRACE = 20;
      WORKERS = null;
      SOME_NEW_SETTING = "on";
    };
  };

  cases = {
    "a disabled module defines no service and no user" =
      let
        config = evaluate { };
      in
      config.systemd.services == { } && config.users.users == { } && !config.services.mysql.enable;

    "the minimal service runs the package's binary directly" =
      minimalService.serviceConfig.ExecStart == "${package}/bin/valhalla";
    "the minimal service passes only the settings that have values" =
      minimalService.environment == {
        FLASK_PORT = "5000";
        MYSQL_DATABASE = "valhalla";
      };
    "the minimal service loads no credential and no environment file" =
      minimalService.serviceConfig.LoadCredential == [ ]
      && !(minimalService.serviceConfig ? EnvironmentFile);
    "the minimal service has no capability and a private user namespace" =
      minimalService.serviceConfig.CapabilityBoundingSet == ""
      && !(minimalService.serviceConfig ? AmbientCapabilities)
      && minimalService.serviceConfig.PrivateUsers;
    "the minimal service is hardened" =
      minimalService.serviceConfig.ProtectSystem == "strict"
      && minimalService.serviceConfig.NoNewPrivileges
      && minimalService.serviceConfig.User == "valhalla"
      && minimalService.serviceConfig.UMask == "0077";
    "the minimal configuration passes its assertions" = failedAssertions minimal == [ ];
    "the minimal configuration opens no port and starts no database" =
      minimal.networking.firewall.allowedTCPPorts == [ ]
      && !minimal.services.mysql.enable
      && minimalService.after == [ "network-online.target" ];
    "the service user is a system user" = minimal.users.users.valhalla.isSystemUser;

    "secrets become credentials, never environment values" =
      fullService.serviceConfig.LoadCredential == [
        "mysql-password:/run/secrets/valhalla-mysql-password"
        "tls-certificate:/var/lib/acme/sub.example.com/fullchain.pem"
        "tls-key:/var/lib/acme/sub.example.com/key.pem"
      ]
      && !(fullService.environment ? MYSQL_PASSWORD)
      && !(fullService.environment ? SSL_KEY_PATH)
      && !(contains "valhalla-mysql-password" (builtins.toJSON fullService.environment));
    "with secrets the service starts through the credential script" =
      contains "-valhalla-start$" fullService.serviceConfig.ExecStart;
    "the environment file is passed to systemd" =
      fullService.serviceConfig.EnvironmentFile == "/run/secrets/valhalla.env";
    "lists and numbers become environment strings" =
      fullService.environment.ADMIN_IDS == "111,222"
      && fullService.environment.FLASK_PORT == "443"
      && fullService.environment.LOG_FORMAT == "json";
    "port 443 gets the bind capability and no user namespace" =
      fullService.serviceConfig.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ]
      && fullService.serviceConfig.CapabilityBoundingSet == [ "CAP_NET_BIND_SERVICE" ]
      && !fullService.serviceConfig.PrivateUsers;
    "openFirewall opens the listening port" = full.networking.firewall.allowedTCPPorts == [ 443 ];
    "a local database is created for the service user" =
      full.services.mysql.enable
      && full.services.mysql.ensureDatabases == [ "valhalla" ]
      && full.services.mysql.ensureUsers == [
        {
          name = "valhalla";
          ensurePermissions = {
            "valhalla.*" = "ALL PRIVILEGES";
          };
        }
      ];
    "a local database is reached over its socket as the user valhalla" =
      fullService.environment.MYSQL_SOCKET == "/run/mysqld/mysqld.sock"
      && fullService.environment.MYSQL_USER == "valhalla";
    "a local database orders the service after MariaDB" =
      fullService.after == [
        "network-online.target"
        "mysql.service"
      ]
      && fullService.requires == [ "mysql.service" ];
    "the full configuration passes its assertions" = failedAssertions full == [ ];
    "the unit file lists the credentials and the environment" =
      contains "LoadCredential=tls-key:/var/lib/acme/sub.example.com/key.pem" fullUnit
      && contains "Environment=\"ADMIN_IDS=111,222\"" fullUnit;

    "unknown settings are passed through and null ones left out" =
      (serviceOf freeform).environment.SOME_NEW_SETTING == "on"
      && !((serviceOf freeform).environment ? WORKERS);
    "the stop timeout follows SHUTDOWN_GRACE" =
      (serviceOf freeform).serviceConfig.TimeoutStopSec == 35
      && minimalService.serviceConfig.TimeoutStopSec == 60;

    "a password in settings fails an assertion" =
      builtins.any (contains "MYSQL_PASSWORD") (
        failedAssertions (withValhalla {
          settings.MYSQL_PASSWORD = "hunter2";
        })
      );
    "a certificate without a key fails an assertion" =
      failedAssertions (withValhalla {
        tls.certificateFile = "/etc/cert.pem";
      }) != [ ];
    "a relative secret path fails an assertion" =
      failedAssertions (withValhalla {
        passwordFile = "secrets/password";
      }) != [ ];
    "a local database with another user fails an assertion" =
      failedAssertions (withValhalla {
        database.createLocally = true;
        settings.MYSQL_USER = "root";
      }) != [ ];

    "a port that is not a number is rejected" = throws (serviceOf (withValhalla {
      settings.FLASK_PORT = "80";
    })).environment;
    "an unknown log format is rejected" = throws (serviceOf (withValhalla {
      settings.LOG_FORMAT = "xml";
    })).environment;
    "admin ids must be numbers" = throws (serviceOf (withValhalla {
      settings.ADMIN_IDS = [ "1" ];
    })).environment;
    "the cache bound must be a positive number" = throws (serviceOf (withValhalla {
      settings.CACHE_MAX_BYTES = 0;
    })).environment;
    "the cache bound is passed on" =
      (serviceOf (withValhalla { settings.CACHE_MAX_BYTES = 1048576; })).environment.CACHE_MAX_BYTES
      == "1048576";
    "an unknown option is rejected" = throws (withValhalla { listenAddress = "::"; }).systemd.services;
  };

  names = builtins.attrNames cases;
  failures = builtins.filter (name: !cases.${name}) names;
in
if failures == [ ] then
  "module: ${toString (builtins.length names)} passed, 0 failed"
else
  throw "module: ${toString (builtins.length failures)} failed: ${builtins.concatStringsSep "; " failures}"
