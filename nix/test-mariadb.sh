#!/usr/bin/env bash
# A throwaway MariaDB for the test suite: `start DIR PORT` creates a data directory in DIR,
# starts mariadbd on 127.0.0.1:PORT with an empty root password, and waits until it
# answers; `stop DIR` shuts it down.
#
# The flake's test check runs it inside the build sandbox, which has its own network
# namespace, so port 3306 is free there; scripts/check-nix runs the same file on the host
# with another port to prove it works with the MariaDB that Debian ships.
set -euo pipefail

usage() {
    echo "usage: test-mariadb.sh start DIR PORT | stop DIR" >&2
    exit 2
}

find_tool() {
    # Debian keeps the server in /usr/sbin, which is not on every PATH.
    local name=$1
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    elif [ -x "/usr/sbin/$name" ]; then
        echo "/usr/sbin/$name"
    else
        echo "test-mariadb: $name not found on PATH" >&2
        exit 1
    fi
}

start() {
    local dir=$1 port=$2
    local install_db server admin client basedir
    install_db=$(find_tool mariadb-install-db)
    server=$(find_tool mariadbd)
    admin=$(find_tool mariadb-admin)
    client=$(find_tool mariadb)
    basedir=$(dirname "$(dirname "$install_db")")

    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)

    # mariadbd refuses to run as root without --user; the Nix sandbox builds as an
    # unprivileged user, where the option would only print a warning.
    local user_args=()
    if [ "$(id -u)" = 0 ]; then
        user_args=(--user=root)
    fi

    # No option file is read (--no-defaults), so the host's configuration cannot change
    # what the tests see; every setting the tests rely on is on this command line.
    "$install_db" --no-defaults "${user_args[@]}" --basedir="$basedir" \
        --datadir="$dir/data" --auth-root-authentication-method=normal \
        --skip-name-resolve --skip-test-db >"$dir/install.log" 2>&1 || {
        cat "$dir/install.log" >&2
        echo "test-mariadb: mariadb-install-db failed" >&2
        exit 1
    }

    "$server" --no-defaults "${user_args[@]}" --basedir="$basedir" \
        --datadir="$dir/data" --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
        --port="$port" --bind-address=127.0.0.1 --skip-name-resolve \
        --innodb-buffer-pool-size=64M --max-connections=300 \
        --log-error="$dir/error.log" >"$dir/server.log" 2>&1 &

    local waited=0
    until "$admin" --no-defaults --socket="$dir/mysqld.sock" -uroot ping >/dev/null 2>&1; do
        waited=$((waited + 1))
        if [ "$waited" -gt 120 ]; then
            cat "$dir/error.log" >&2 || true
            echo "test-mariadb: no answer on $dir/mysqld.sock after 60 s" >&2
            exit 1
        fi
        sleep 0.5
    done

    # With --skip-name-resolve a client on 127.0.0.1 is not 'root'@'localhost', which is
    # the only root account mariadb-install-db makes, so the tests' TCP user is added here.
    "$client" --no-defaults --socket="$dir/mysqld.sock" -uroot -e "
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
    echo "test-mariadb: ready on 127.0.0.1:$port"
}

stop() {
    local dir=$1
    local admin
    admin=$(find_tool mariadb-admin)
    "$admin" --no-defaults --socket="$dir/mysqld.sock" -uroot shutdown
}

case "${1:-}" in
start)
    [ $# -eq 3 ] || usage
    start "$2" "$3"
    ;;
stop)
    [ $# -eq 2 ] || usage
    stop "$2"
    ;;
*) usage ;;
esac
