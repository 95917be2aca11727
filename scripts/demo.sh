#!/usr/bin/env bash
# make demo: a throwaway PostgreSQL primary archives its WAL through
# `walship wal-push` into ./demo/archive while pgbench writes; `walship
# backup-push` takes two base backups into the same archive; `walship
# backup-delete` drops the older one and the WAL only it needed, `walship
# wal-verify` checks nothing is missing; `walship
# backup-fetch` restores the newer into a new directory, recovery settings
# included, and the copy replays the archive through `walship wal-fetch`;
# its tables must equal the primary's.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pgbin=${WALSHIP_PG_BIN:-/usr/lib/postgresql/15/bin}
demo=$repo/demo
if [ -t 1 ]; then
	say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
else
	say() { printf 'demo: %s\n' "$*"; }
fi

[ -x "$pgbin/postgres" ] || { echo "demo: no PostgreSQL in $pgbin: run make deps" >&2; exit 2; }
[ -x "$repo/bin/walship" ] || { echo "demo: bin/walship missing: run make build" >&2; exit 2; }

# PostgreSQL refuses to run as root: run it (and so the archive hooks) as
# the postgres OS user then.
if [ "$(id -u)" -eq 0 ]; then
	pguser=postgres
	as_pg() { runuser -u postgres -- "$@"; }
else
	pguser=$(id -un)
	as_pg() { "$@"; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/walship-demo.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

# The archive lives in ./demo/archive. When the server's OS user cannot
# reach the repository, the archive is kept in the work dir and linked.
rm -rf "$demo"
mkdir -p "$demo"
archive=$demo/archive
if [ "$pguser" = postgres ] && ! runuser -u postgres -- test -x "$demo"; then
	archive=$work/archive
	ln -s "$archive" "$demo/archive"
fi
mkdir -p "$archive"
[ "$pguser" = postgres ] && chown postgres: "$archive" "$work"
install -m 0755 "$repo/bin/walship" "$work/walship"

free_port() {
	local p
	for p in $(seq "$1" $(($1 + 200))); do
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
	echo "demo: no free port" >&2
	exit 1
}
port1=$(free_port 55432)
port2=$(free_port $((port1 + 1)))

psql1() { "$pgbin/psql" -XAtq -h 127.0.0.1 -p "$port1" -U postgres "$@"; }
psql2() { "$pgbin/psql" -XAtq -h 127.0.0.1 -p "$port2" -U postgres "$@"; }
checksum() { # all pgbench tables, in a stable order
	"$pgbin/psql" -XAtq -h 127.0.0.1 -p "$1" -U postgres -c "
	  SELECT md5(string_agg(t, ''))
	  FROM (SELECT md5(coalesce(string_agg(a::text, ',' ORDER BY aid), '')) t FROM pgbench_accounts a
	        UNION ALL SELECT md5(coalesce(string_agg(b::text, ',' ORDER BY bid), '')) FROM pgbench_branches b
	        UNION ALL SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY tid), '')) FROM pgbench_tellers x
	        UNION ALL SELECT md5(coalesce(string_agg(h::text, ',' ORDER BY h::text), '')) FROM pgbench_history h) s"
}
start_pg() { # datadir
	as_pg "$pgbin/pg_ctl" -D "$1" -l "$1.log" -w -t 120 start >/dev/null
	pids+=("$(head -1 "$1/postmaster.pid")")
}

say "primary: initdb, archive_command = 'walship wal-push %p' into $archive"
as_pg "$pgbin/initdb" -D "$work/primary" -U postgres -A trust >/dev/null
cat >>"$work/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port1
unix_socket_directories = '$work'
wal_level = replica
archive_mode = on
archive_command = '$work/walship --repo file://$archive wal-push %p'
CONF
start_pg "$work/primary"

say "pgbench -i -s 10, then walship backup-push into the archive"
"$pgbin/pgbench" -h 127.0.0.1 -p "$port1" -U postgres -i -s 10 -q postgres 2>/dev/null
backup=$(as_pg "$work/walship" --repo "file://$archive" --log-level warn backup-push --pg "host=127.0.0.1 port=$port1 user=postgres")
as_pg "$work/walship" --repo "file://$archive" backup-list | sed 's/^/      /'

say "pgbench for 15 s while the archiver ships WAL"
"$pgbin/pgbench" -h 127.0.0.1 -p "$port1" -U postgres -T 15 -c 4 -j 2 postgres 2>/dev/null | grep -E '^(number of transactions actually processed|tps)' | sed 's/^/      /'
say "a second backup, then 5 s more of pgbench"
backup=$(as_pg "$work/walship" --repo "file://$archive" --log-level warn backup-push --pg "host=127.0.0.1 port=$port1 user=postgres")
"$pgbin/pgbench" -h 127.0.0.1 -p "$port1" -U postgres -T 5 -c 4 -j 2 postgres >/dev/null 2>&1
want=$(checksum "$port1")
last=$(psql1 -c "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 600); do
	done_wal=$(psql1 -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
	[[ "$done_wal" > "$last" || "$done_wal" == "$last" ]] && break
	sleep 0.1
done
[[ "$done_wal" > "$last" || "$done_wal" == "$last" ]] || { echo "demo: archiver did not reach $last" >&2; exit 1; }
as_pg "$pgbin/pg_ctl" -D "$work/primary" -m fast -w stop >/dev/null

segments=$(find "$archive/wal" -name '????????????????????????.zst' | wc -l)
raw=$((segments * 16))
stored=$(du -sm "$archive/wal" | cut -f1)
say "archive: $segments segments ($raw MB of WAL) stored in $stored MB"

say "retention: walship backup-delete --retain-full 1 --confirm, then walship wal-verify"
as_pg "$work/walship" --repo "file://$archive" --log-level warn backup-delete --retain-full 1 --confirm | sed 's/^/      /'
as_pg "$work/walship" --repo "file://$archive" wal-verify | sed 's/^/      /'

say "disaster recovery: walship backup-fetch $backup, then start PostgreSQL on the copy"
as_pg "$work/walship" --repo "file://$archive" --log-level warn backup-fetch --verify "$backup" "$work/copy"
grep -A3 'walship backup-fetch' "$work/copy/postgresql.auto.conf" | grep restore_command | sed 's/^/      /'
cat >>"$work/copy/postgresql.conf" <<CONF
port = $port2
archive_mode = off
CONF
start_pg "$work/copy"
for _ in $(seq 1200); do
	[ "$(psql2 -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
	sleep 0.1
done
got=$(checksum "$port2")
restored=$(grep -c 'restored 0' "$work/copy.log" || true)
say "replayed $restored segments from the archive"
say "primary tables: $want"
say "copy tables:    $got"
if [ "$want" = "$got" ]; then
	say "OK: the copy restored from ./demo/archive matches the primary"
else
	echo "demo: MISMATCH between primary and restored copy; server log follows" >&2
	tail -30 "$work/copy.log" >&2
	exit 1
fi
