// Package wal owns walship's knowledge of PostgreSQL's write-ahead log as
// files: log sequence numbers (LSN), timelines, the names of the files
// PostgreSQL archives (WAL segments, .partial segments, timeline history
// and backup history files) and the arithmetic between them, the long page
// header at the start of every segment, and timeline history files.
//
// Guarantees:
//   - ParseFileName accepts only the exact names PostgreSQL gives archived
//     files (uppercase hexadecimal, fixed lengths, four suffixes). Anything it
//     accepts is a plain file name, never a path: it contains no slash, no
//     "..", no NUL, and it is the canonical spelling (FileName.String gives
//     back the same bytes). Callers may therefore use an accepted %f as an
//     object key or a file name inside the data directory.
//   - The WAL segment size is always a parameter (1 MB to 1 GB, a power of
//     two, see CheckSegmentSize); the package has no package-level state and
//     every function is safe for concurrent use.
//   - Parsers of outside input (names, LSNs, page headers, history files)
//     return errors and never panic, whatever the input. Their errors are one
//     line, say what is wrong and what a valid value looks like, and match the
//     package's sentinel errors with errors.Is.
//   - Functions without an error result (SegmentFileName, SegmentStartLSN,
//     LSNToSegNo, …) panic on a segment size that CheckSegmentSize rejects:
//     sizes are validated once where they enter walship (configuration, the
//     archive's metadata, a page header), so an invalid one there is a bug.
//
// Binary layouts follow PostgreSQL 13 to 18 on little-endian 64-bit
// platforms (x86-64, arm64), as in src/include/access/xlog_internal.h.
package wal
