#!/bin/sh
# The two checks of the official image's healthcheck.sh that compose.yaml
# uses: --connect (a TCP connection succeeds) and --innodb_initialized
# (InnoDB is ready). Exits 0 when every check given passes.
set -eu

cnf=/var/lib/mysql/.my-healthcheck.cnf
[ -r "$cnf" ] || exit 1

query() {
	mariadb --defaults-extra-file="$cnf" --protocol=tcp -h 127.0.0.1 \
		--batch --skip-column-names -e "$1"
}

[ "$#" -gt 0 ] || set -- --connect
for check in "$@"; do
	case "$check" in
	--connect)
		query 'SELECT 1' >/dev/null
		;;
	--innodb_initialized)
		ready=$(query "SELECT 1 FROM information_schema.ENGINES
		               WHERE engine = 'InnoDB' AND support IN ('YES', 'DEFAULT')")
		[ "$ready" = 1 ]
		;;
	*)
		echo "healthcheck.sh: unknown check $check" >&2
		exit 2
		;;
	esac
done
