# The NixOS module: `services.valhalla`, a hardened systemd service with its settings as
# environment variables, secrets read from files, and an optional local MariaDB.
#
# The flake passes its own `packages` so the default package is the flake's build.
{ packages }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.valhalla;
  inherit (lib) mkOption types;

  # A setting left at null is not passed, so the server applies its own default; the
  # defaults are documented in one place (docs/configuration.md), not copied here.
  optionalSetting =
    type: description:
    mkOption {
      type = types.nullOr type;
      default = null;
      inherit description;
    };

  seconds = types.ints.unsigned;

  # Environment values are strings; lists become the comma-separated form the server
  # reads (ADMIN_IDS), and an empty list is treated like null.
  toEnvironmentValue =
    value:
    if builtins.isList value then
      lib.concatMapStringsSep "," toString value
    else if builtins.isBool value then
      lib.boolToString value
    else
      toString value;

  environment = lib.mapAttrs (_: toEnvironmentValue) (
    lib.filterAttrs (_: value: value != null && value != [ ]) cfg.settings
  );

  bindsPrivilegedPort = cfg.settings.FLASK_PORT < 1024;
  hasTls = cfg.tls.certificateFile != null;

  # Secrets never enter the Nix store or the unit file: systemd copies each file (as
  # root) into the service's private credentials directory, and this script exports
  # them before it replaces itself with the server.
  needsWrapper = cfg.passwordFile != null || hasTls;
  startScript = pkgs.writeShellScript "valhalla-start" ''
    ${lib.optionalString (cfg.passwordFile != null) ''
      MYSQL_PASSWORD="$(< "$CREDENTIALS_DIRECTORY/mysql-password")"
      export MYSQL_PASSWORD
    ''}
    ${lib.optionalString hasTls ''
      export SSL_CERT_PATH="$CREDENTIALS_DIRECTORY/tls-certificate"
      export SSL_KEY_PATH="$CREDENTIALS_DIRECTORY/tls-key"
    ''}
    exec ${lib.getExe cfg.package} "$@"
  '';

  isAbsolute = path: path == null || lib.hasPrefix "/" path;
in
{
  options.services.valhalla = {
    enable = lib.mkEnableOption "valhalla, the subscription aggregator for VPN panels";

    package = mkOption {
      type = types.package;
      default = packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = lib.literalExpression "valhalla.packages.\${pkgs.stdenv.hostPlatform.system}.default";
      description = "The valhalla package to run.";
    };

    settings = mkOption {
      description = ''
        Environment variables of the server (docs/configuration.md lists them all).
        Known variables are typed; any other is passed as it is. A null value leaves
        the server's default. Never put secrets here: the values end up in the
        world-readable Nix store. Use `passwordFile` or `environmentFile` instead.
      '';
      default = { };
      example = lib.literalExpression ''
        {
          FLASK_PORT = 8080;
          ADMIN_IDS = [ 123456789 ];
          PUBLIC_BASE_URL = "https://sub.example.com";
          LOG_FORMAT = "json";
        }
      '';
      type = types.submodule {
        freeformType = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.int
              types.bool
              (types.listOf types.int)
            ]
          )
        );

        options = {
          FLASK_HOST = optionalSetting types.str "Address to listen on (the server's default is all IPv4 addresses).";
          FLASK_PORT = mkOption {
            type = types.port;
            default = 5000;
            description = "Port to listen on; below 1024 the service is given CAP_NET_BIND_SERVICE.";
          };
          WORKERS = optionalSetting types.ints.positive "Scheduler threads (the server's default is the number of cores).";
          REQUEST_TIMEOUT = optionalSetting types.ints.positive "Longest time one request may take, in seconds (alias of GUNICORN_TIMEOUT).";
          IDLE_TIMEOUT = optionalSetting seconds "Seconds an idle client connection is kept open.";
          SHUTDOWN_GRACE = optionalSetting seconds "Seconds in-flight requests get to finish after SIGTERM.";

          MYSQL_HOST = optionalSetting types.str "Database host.";
          MYSQL_PORT = optionalSetting types.port "Database port.";
          MYSQL_USER = optionalSetting types.str "Database user.";
          MYSQL_SOCKET = optionalSetting types.str "Unix socket of a local database, used instead of MYSQL_HOST and MYSQL_PORT (set by `database.createLocally`).";
          MYSQL_DATABASE = mkOption {
            type = types.str;
            default = "valhalla";
            description = "Database name (also the database created by `database.createLocally`).";
          };
          MYSQL_POOL_SIZE = optionalSetting types.ints.positive "Database connections (the server's default scales with the cores).";
          MYSQL_ACQUIRE_TIMEOUT_MS = optionalSetting types.ints.unsigned "Milliseconds a request waits for a free database connection before it is answered 503.";
          MYSQL_STARTUP_WAIT = optionalSetting seconds "Seconds the server waits at start for the database to answer.";

          ADMIN_IDS = mkOption {
            type = types.listOf types.ints.unsigned;
            default = [ ];
            example = [ 123456789 ];
            description = "Telegram user ids of the admins (passed comma-separated).";
          };
          PUBLIC_BASE_URL = optionalSetting types.str "Public URL used when printing subscription links.";

          FETCH_CACHE_TTL = optionalSetting seconds "Seconds a panel's answer is reused.";
          FETCH_MAX_WORKERS = optionalSetting types.ints.positive "Concurrent panel fetches for one request.";
          PANEL_USER_TIMEOUT = optionalSetting seconds "Timeout of a panel's user lookup, in seconds.";
          PANEL_LINK_TIMEOUT = optionalSetting seconds "Timeout of a panel's link and disable calls, in seconds.";
          PANEL_CA_FILE = optionalSetting types.str "PEM file of extra certificates trusted for panels over HTTPS (a private CA or a self-signed panel certificate); the service must be able to read it.";
          CACHE_MAX_BYTES = optionalSetting types.ints.positive "Memory bound of the panel-answer cache, in bytes.";
          STALE_TTL = optionalSetting seconds "Seconds a panel's last good answer may be served while the panel fails.";
          PROFILE_UPDATE_INTERVAL = optionalSetting types.ints.positive "Update interval advertised to VPN client apps.";

          LOG_FORMAT = optionalSetting (types.enum [
            "text"
            "json"
          ]) "Log line format.";
          LOG_LEVEL = optionalSetting types.str "Log filter, such as `info` or `valhalla=debug`.";
        };
      };
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/valhalla.env";
      description = ''
        Absolute path of a file of `NAME=value` lines (systemd's EnvironmentFile), read by
        systemd when the service starts; for secrets, or anything kept out of the store.
      '';
    };

    passwordFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/valhalla-mysql-password";
      description = ''
        Absolute path of a file holding the database password (MYSQL_PASSWORD). It is
        handed to the service as a systemd credential, so it may be readable by root only.
      '';
    };

    tls = {
      certificateFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/sub.example.com/fullchain.pem";
        description = "PEM certificate chain; with `keyFile` the server speaks HTTPS itself.";
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/sub.example.com/key.pem";
        description = "PEM private key, handed to the service as a systemd credential.";
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `settings.FLASK_PORT` in the firewall.";
    };

    database.createLocally = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run MariaDB on this machine with a database `settings.MYSQL_DATABASE` and a user
        `valhalla` that logs in over the Unix socket as the service's system user, so no
        password exists at all.
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !(cfg.settings ? MYSQL_PASSWORD);
            message = "services.valhalla.settings.MYSQL_PASSWORD would be stored world-readable in the Nix store; use services.valhalla.passwordFile or environmentFile";
          }
          {
            assertion = (cfg.tls.certificateFile == null) == (cfg.tls.keyFile == null);
            message = "services.valhalla.tls needs both certificateFile and keyFile, or neither";
          }
          {
            assertion = !(hasTls && (cfg.settings ? SSL_CERT_PATH || cfg.settings ? SSL_KEY_PATH));
            message = "services.valhalla: set the certificate through tls.certificateFile and tls.keyFile, not settings.SSL_CERT_PATH and SSL_KEY_PATH";
          }
          {
            assertion = lib.all isAbsolute [
              cfg.environmentFile
              cfg.passwordFile
              cfg.tls.certificateFile
              cfg.tls.keyFile
            ];
            message = "services.valhalla: environmentFile, passwordFile and the tls files must be absolute paths";
          }
          {
            assertion = !cfg.database.createLocally || cfg.settings.MYSQL_USER == "valhalla";
            message = "services.valhalla.database.createLocally logs in as the system user valhalla, so settings.MYSQL_USER must stay \"valhalla\"";
          }
        ];

        # A fixed system user rather than DynamicUser: the local database's Unix-socket
        # login maps the connecting process to its user name, which must not change.
        users.users.valhalla = {
          isSystemUser = true;
          group = "valhalla";
          description = "valhalla subscription aggregator";
        };
        users.groups.valhalla = { };

        networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.settings.FLASK_PORT ];

        systemd.services.valhalla = {
          description = "valhalla subscription aggregator";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          inherit environment;

          serviceConfig = {
            ExecStart = if needsWrapper then "${startScript}" else lib.getExe cfg.package;
            User = "valhalla";
            Group = "valhalla";
            EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
            LoadCredential =
              lib.optional (cfg.passwordFile != null) "mysql-password:${cfg.passwordFile}"
              ++ lib.optionals hasTls [
                "tls-certificate:${cfg.tls.certificateFile}"
                "tls-key:${cfg.tls.keyFile}"
              ];

            # The server handles SIGTERM itself and drains requests for SHUTDOWN_GRACE
            # seconds, so systemd waits a little longer than that before it kills.
            Restart = "on-failure";
            RestartSec = 5;
            TimeoutStopSec =
              if cfg.settings.SHUTDOWN_GRACE == null then 60 else cfg.settings.SHUTDOWN_GRACE + 15;
            # Every client connection is a socket, and every panel fetch another one.
            LimitNOFILE = 65536;

            # Hardening: the server only needs the network, its credentials and, with a
            # local database, the MariaDB socket. It writes no files at all.

            # An empty value drops every capability.
            CapabilityBoundingSet = if bindsPrivilegedPort then [ "CAP_NET_BIND_SERVICE" ] else "";
            AmbientCapabilities = lib.mkIf bindsPrivilegedPort [ "CAP_NET_BIND_SERVICE" ];
            # A user namespace would take the capability above away again.
            PrivateUsers = !bindsPrivilegedPort;
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            ProtectProc = "invisible";
            ProcSubset = "pid";
            ProtectClock = true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectControlGroups = true;
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            RemoveIPC = true;
            LockPersonality = true;
            # Coroutine stacks are plain read-write memory; nothing needs to be executable.
            MemoryDenyWriteExecute = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
            ];
            DevicePolicy = "closed";
            UMask = "0077";
          };
        };
      }

      (lib.mkIf cfg.database.createLocally {
        services.mysql = {
          enable = true;
          package = lib.mkDefault pkgs.mariadb;
          ensureDatabases = [ cfg.settings.MYSQL_DATABASE ];
          ensureUsers = [
            {
              name = "valhalla";
              ensurePermissions = {
                "${cfg.settings.MYSQL_DATABASE}.*" = "ALL PRIVILEGES";
              };
            }
          ];
        };

        services.valhalla.settings = {
          MYSQL_USER = lib.mkDefault "valhalla";
          # The local database lets the valhalla system user in over its Unix socket
          # without a password (unix_socket authentication).
          MYSQL_SOCKET = lib.mkDefault "/run/mysqld/mysqld.sock";
        };

        systemd.services.valhalla = {
          after = [ "mysql.service" ];
          requires = [ "mysql.service" ];
        };
      })
    ]
  );
}
