#!/bin/sh
# First-start setup of the MariaDB stand-in, then the server as PID 1.
#
# Reads the variables the official image reads (MYSQL_* as fallbacks):
# MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD,
# MARIADB_RANDOM_ROOT_PASSWORD (one of the three is required),
# MARIADB_DATABASE, MARIADB_USER and MARIADB_PASSWORD.
set -eu

datadir=/var/lib/mysql
socket=/run/mysqld/mysqld.sock

say() { echo "entrypoint: $*" >&2; }

# Quotes a value for a single-quoted SQL string.
sql_string() {
	printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"
}

# Quotes a name for a backquoted SQL identifier.
sql_name() {
	# shellcheck disable=SC2016 # the backquotes are literal
	printf '%s' "$1" | sed -e 's/`/``/g'
}

first_start() {
	root_password=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
	allow_empty=${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}
	random_root=${MARIADB_RANDOM_ROOT_PASSWORD:-${MYSQL_RANDOM_ROOT_PASSWORD:-}}
	database=${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}
	user=${MARIADB_USER:-${MYSQL_USER:-}}
	password=${MARIADB_PASSWORD:-${MYSQL_PASSWORD:-}}

	if [ -z "$root_password" ] && [ -z "$allow_empty" ] && [ -z "$random_root" ]; then
		say "set one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, MARIADB_RANDOM_ROOT_PASSWORD"
		exit 1
	fi
	if [ "$user" = root ]; then
		say "MARIADB_USER is for an ordinary user and cannot be root"
		exit 1
	fi
	if [ -n "$random_root" ]; then
		root_password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
		say "GENERATED ROOT PASSWORD: $root_password"
	fi

	say "initialising $datadir"
	mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
		--auth-root-authentication-method=normal >/dev/null
	mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket="$socket" &
	pid=$!
	tries=0
	until mariadb-admin --socket="$socket" -u root ping >/dev/null 2>&1; do
		tries=$((tries + 1))
		if [ "$tries" -gt 60 ]; then
			say "the temporary server did not start"
			exit 1
		fi
		sleep 1
	done

	health_password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
	{
		echo "SET sql_log_bin = 0;"
		echo "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '$(sql_string "$root_password")';"
		echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
		echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(sql_string "$root_password")';"
		for host in 127.0.0.1 ::1 localhost; do
			echo "CREATE USER 'healthcheck'@'$host' IDENTIFIED BY '$health_password';"
		done
		if [ -n "$database" ]; then
			echo "CREATE DATABASE IF NOT EXISTS \`$(sql_name "$database")\`;"
		fi
		if [ -n "$user" ]; then
			echo "CREATE USER '$(sql_string "$user")'@'%' IDENTIFIED BY '$(sql_string "$password")';"
			if [ -n "$database" ]; then
				echo "GRANT ALL ON \`$(sql_name "$database")\`.* TO '$(sql_string "$user")'@'%';"
			fi
		fi
		echo "FLUSH PRIVILEGES;"
	} | mariadb --socket="$socket" -u root

	umask 077
	cat >"$datadir/.my-healthcheck.cnf" <<CNF
[client]
port=3306
socket=$socket
user=healthcheck
password=$health_password
CNF
	chown mysql:mysql "$datadir/.my-healthcheck.cnf"

	kill "$pid"
	wait "$pid" || true
	say "first start done"
}

case "${1:-}" in
mariadbd | mysqld)
	shift
	mkdir -p /run/mysqld
	chown mysql:mysql /run/mysqld "$datadir"
	if [ ! -d "$datadir/mysql" ]; then
		first_start
	fi
	exec mariadbd --user=mysql --datadir="$datadir" --socket="$socket" \
		--bind-address=0.0.0.0 "$@"
	;;
*)
	exec "$@"
	;;
esac
