// Package failover owns the steps around a promotion that need the
// archive as well as a server or its data directory (zombie-primary
// fencing lives in archive, where every push passes).
//
// Promote ends recovery of a standby that a walship archive feeds: a planned promotion, which first makes sure the standby has
// replayed everything the archive and its upstream hold, and a forced one,
// which promotes at once and reports the WAL left behind (the data-loss
// window).
//
// Guarantees:
//   - A planned promotion calls pg_promote only once the standby has
//     replayed up to the end of the last complete WAL record the archive
//     holds on the timeline it follows (it reads that segment's records to
//     know where that is), and everything it received by streaming, and
//     while its WAL receiver is streaming, everything the upstream last
//     said it had. Otherwise it returns a NotReachedError after the
//     timeout and the server stays a standby.
//   - A forced promotion keeps wal-fetch from handing the standby another
//     segment while it ends recovery (see HoldFile), so it promotes where
//     it stands; WAL already in pg_wal is still replayed, as PostgreSQL
//     always does.
//   - Both read the new timeline and the fork LSN from the history file
//     the promotion wrote, push that file into the archive, and measure
//     what the archive (and the upstream, when the standby streamed) holds
//     of the old timeline beyond the fork.
//
// Rejoin turns a primary that lost a failover into a standby of the new
// primary: pg_rewind runs with WAL fetched from the archive
// (restore_command) and, when a rewind is impossible, the old data
// directory is set aside (never deleted) so that the newest backup on
// the new primary's timeline can be restored in its place.
package failover
