"""Evaluates the flake's outputs against the stand-in inputs and compares what they hand
to nixpkgs and crane with what the flake promises (scripts/check-nix step 3).

usage: check_outputs.py TREE STUBS
"""

import json
import os
import subprocess
import sys
import tomllib

LINUX = ["aarch64-linux", "x86_64-linux"]
DARWIN = ["aarch64-darwin", "x86_64-darwin"]


def evaluate(tree, stubs, attribute, apply):
    command = [
        "nix",
        "--extra-experimental-features",
        "nix-command flakes",
        "eval",
        "--json",
        "--no-write-lock-file",
        "--override-input",
        "nixpkgs",
        f"path:{stubs}/nixpkgs",
        "--override-input",
        "crane",
        f"path:{stubs}/crane",
        "--override-input",
        "flake-utils",
        f"path:{stubs}/flake-utils",
        f"{tree}#{attribute}",
        "--apply",
        apply,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"nix eval {attribute} failed:\n{result.stderr}")
    return json.loads(result.stdout)


NAMES = "outputs: builtins.mapAttrs (_: set: builtins.mapAttrs (_: value: value.name) set) outputs"

LINUX_DETAILS = """packages: let
  package = packages.x86_64-linux.default;
  image = packages.x86_64-linux.image;
in {
  packagePath = "${package}";
  cargoExtraArgs = package.cargoExtraArgs;
  doCheck = package.doCheck;
  mainProgram = package.meta.mainProgram;
  artifacts = package.cargoArtifacts.name;
  artifactsPath = package.cargoArtifacts.drvPath;
  nativeBuildInputs = map (input: input.pname) package.nativeBuildInputs;
  buildInputs = map (input: input.pname) package.buildInputs;
  source = builtins.attrNames (builtins.readDir package.src);
  imageName = image.imageName;
  imageTag = image.imageTag;
  # What the flake passed to dockerTools.buildLayeredImage, as the stand-in records it.
  imageArguments = builtins.fromJSON (builtins.unsafeDiscardStringContext image.standInArguments);
}"""

CHECK_DETAILS = """checks: let
  linux = checks.x86_64-linux;
in {
  clippyArgs = linux.clippy.cargoClippyExtraArgs;
  clippyArtifacts = linux.clippy.cargoArtifacts.drvPath;
  testArtifacts = linux.tests.cargoArtifacts.drvPath;
  chromium = linux.tests.VALHALLA_CHROMIUM;
  database = linux.tests.VALHALLA_TEST_MYSQL;
  checkInputs = map (input: input.pname) linux.tests.nativeCheckInputs;
  preCheck = linux.tests.preCheck;
  postCheck = linux.tests.postCheck;
  units = linux.nixos-module.entries;
}"""

APPS = """apps: builtins.mapAttrs (_: set: builtins.mapAttrs (_: app: { inherit (app) type program; }) set) apps"""


def main():
    tree, stubs = sys.argv[1:3]
    with open(os.path.join(tree, "Cargo.toml"), "rb") as manifest:
        version = tomllib.load(manifest)["workspace"]["package"]["version"]

    problems = []

    def expect(condition, what):
        if not condition:
            problems.append(what)

    packages = evaluate(tree, stubs, "packages", NAMES)
    checks = evaluate(tree, stubs, "checks", NAMES)
    apps = evaluate(tree, stubs, "apps", APPS)
    shells = evaluate(tree, stubs, "devShells", NAMES)
    formatter = evaluate(tree, stubs, "formatter", "set: builtins.mapAttrs (_: f: f.name) set")
    module = evaluate(tree, stubs, "nixosModules", "set: builtins.isFunction set.default")
    linux = evaluate(tree, stubs, "packages", LINUX_DETAILS)
    check_details = evaluate(tree, stubs, "checks", CHECK_DETAILS)

    server = f"valhalla-{version}"
    for system in LINUX + DARWIN:
        loadtest = f"valhalla-loadtest-{version}"
        expected = {"default": server, "valhalla": server, "loadtest": loadtest}
        expected_checks = {"valhalla": server, "loadtest": loadtest}
        if system in LINUX:
            expected["image"] = "valhalla.tar"
        expect(packages.get(system) == expected, f"packages.{system} is {packages.get(system)}")

        names = checks.get(system, {})
        expect(
            {name: names.get(name) for name in expected_checks} == expected_checks,
            f"checks.{system} lacks the packages: {names}",
        )
        wanted = {"clippy", "fmt"} | set(expected_checks)
        if system in LINUX:
            wanted |= {"tests", "image", "nixos-module"}
        expect(set(names) == wanted, f"checks.{system} are {sorted(names)}, expected {sorted(wanted)}")

        app = apps.get(system, {}).get("default", {})
        expect(app.get("type") == "app", f"apps.{system}.default is not an app")
        expect(
            str(app.get("program", "")).endswith(f"-{server}/bin/valhalla"),
            f"apps.{system}.default runs {app.get('program')}",
        )
        loadtest_app = apps.get(system, {}).get("loadtest", {})
        expect(
            str(loadtest_app.get("program", "")).endswith(f"-{loadtest}/bin/valhalla-loadtest"),
            f"apps.{system}.loadtest runs {loadtest_app.get('program')}",
        )
        expect("default" in shells.get(system, {}), f"devShells.{system}.default is missing")
        expect(
            str(formatter.get(system, "")).startswith("nixfmt-tree"),
            f"formatter.{system} is {formatter.get(system)}",
        )
    expect(set(packages) == set(LINUX + DARWIN), f"systems are {sorted(packages)}")
    expect(module is True, "nixosModules.default is not a module function")

    expect(linux["cargoExtraArgs"] == "--locked -p valhalla", f"package cargo arguments: {linux['cargoExtraArgs']}")
    expect(linux["doCheck"] is False, "the package runs the test suite")
    expect(linux["mainProgram"] == "valhalla", "meta.mainProgram is not valhalla")
    expect(linux["artifacts"] == f"valhalla-workspace-deps-{version}", f"dependencies are {linux['artifacts']}")
    expect(
        linux["artifactsPath"] == check_details["clippyArtifacts"] == check_details["testArtifacts"],
        "the package, clippy and the tests do not share one dependency build",
    )
    expect("pkg-config" in linux["nativeBuildInputs"], "pkg-config is not a native build input")
    expect("openssl" in linux["buildInputs"], "openssl is not a build input")

    source = set(linux["source"])
    expected_source = {"Cargo.toml", "Cargo.lock", "rustfmt.toml", "server", "fakepanel", "loadtest"}
    if os.path.isdir(os.path.join(tree, ".cargo")):
        expected_source.add(".cargo")
    expect(source == expected_source, f"the filtered source holds {sorted(source)}")

    expect(linux["imageName"] == "valhalla" and linux["imageTag"] == version, "image name or tag")
    image = linux["imageArguments"]
    expect(image.get("compressor") == "none", "the image is compressed (podman 4.3 cannot load it)")
    config = image.get("config", {})
    binary = f"{linux['packagePath']}/bin/valhalla"
    expect(config.get("Entrypoint") == [binary], f"image entrypoint {config.get('Entrypoint')}")
    expect(config.get("User") == "10001:10001", f"image user {config.get('User')}")
    expect("5000/tcp" in config.get("ExposedPorts", {}), "image does not expose 5000/tcp")
    environment = config.get("Env", [])
    expect("SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt" in environment, "image has no CA bundle variable")
    expect(any(item.startswith("TZDIR=/nix/store/") for item in environment), "image has no TZDIR")
    expect(
        config.get("Healthcheck", {}).get("Test") == ["CMD", binary, "healthcheck"],
        "image health check does not run `valhalla healthcheck`",
    )
    expect(
        "org.opencontainers.image.source" in config.get("Labels", {}),
        "image has no OCI source label",
    )
    contents = image.get("contents", [])
    expect(linux["packagePath"] in contents, f"image contents {contents}")
    expect(any("-ca-certificates-" in path for path in contents), "image has no CA certificates")
    expect(any("-fake-nss-" in path for path in contents), "image has no passwd/group")

    clippy = check_details["clippyArgs"]
    expect("--all-targets" in clippy and "--deny warnings" in clippy, f"clippy arguments: {clippy}")
    expect(check_details["chromium"].endswith("/bin/chromium"), "tests get no VALHALLA_CHROMIUM")
    expect(check_details["database"] == "mysql://root@127.0.0.1:3306", "tests get another database")
    expect("mariadb" in check_details["checkInputs"], "tests have no MariaDB")
    expect("test-mariadb.sh start" in check_details["preCheck"], "tests do not start MariaDB")
    expect("test-mariadb.sh stop" in check_details["postCheck"], "tests do not stop MariaDB")
    expect(len(check_details["units"]) == 2, "the module check does not write two unit files")

    for problem in problems:
        print(f"outputs: {problem}", file=sys.stderr)
    print(f"outputs: {len(problems)} problems in the outputs of {len(packages)} systems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
