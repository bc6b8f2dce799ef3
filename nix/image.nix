# The OCI image: `nix build .#image && podman load < result`.
{
  lib,
  dockerTools,
  tzdata,
  valhalla,
}:
let
  # The same numeric user as the Containerfile's image, so volumes and certificates
  # prepared for one work with the other.
  uid = "10001";

  # /etc/passwd and /etc/group with root, nobody and the service user, so tools that
  # look the user up by number find a name; the server itself never does.
  users = dockerTools.fakeNss.override {
    extraPasswdLines = [ "valhalla:x:${uid}:${uid}:valhalla:/var/empty:/bin/false" ];
    extraGroupLines = [ "valhalla:x:${uid}:" ];
  };

  seconds = n: n * 1000000000;

  config = {
    Entrypoint = [ (lib.getExe valhalla) ];
    User = "${uid}:${uid}";
    WorkingDir = "/var/empty";
    ExposedPorts = {
      "5000/tcp" = { };
    };
    # Everything else is configured by the operator through the environment
    # (podman run -e ... or --env-file), exactly as with the Containerfile's image.
    Env = [
      "FLASK_HOST=0.0.0.0"
      "FLASK_PORT=5000"
      # Panels are reached over HTTPS; OpenSSL finds the bundle through this variable.
      "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
      "TZDIR=${tzdata}/share/zoneinfo"
    ];
    # The server answers its own /healthz; no shell or curl is needed in the image.
    # podman keeps this only for docker-format images, which is what this archive is.
    Healthcheck = {
      Test = [
        "CMD"
        (lib.getExe valhalla)
        "healthcheck"
      ];
      Interval = seconds 30;
      Timeout = seconds 5;
      StartPeriod = seconds 30;
      Retries = 3;
    };
    Labels = {
      "org.opencontainers.image.title" = "valhalla";
      "org.opencontainers.image.description" = valhalla.meta.description;
      "org.opencontainers.image.version" = valhalla.version;
      "org.opencontainers.image.source" = valhalla.meta.homepage;
      "org.opencontainers.image.licenses" = "MIT";
    };
  };
in
dockerTools.buildLayeredImage {
  name = "valhalla";
  tag = valhalla.version;

  # An uncompressed docker-archive: podman 4.3 (Debian 12) rejects the default gzip
  # archive with "invalid tar header", while every podman and docker loads a plain tar.
  compressor = "none";

  contents = [
    valhalla
    dockerTools.caCertificates
    users
  ];

  # A writable /tmp for the non-root user; nothing else in the image is written to.
  extraCommands = ''
    mkdir -m 1777 tmp
  '';

  # The creation date stays at buildLayeredImage's fixed default (1970-01-01), so the
  # same inputs give the same image digest.
  inherit config;
}
