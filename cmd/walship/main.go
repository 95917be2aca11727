// Command walship ships PostgreSQL WAL to an archive in a local directory
// or S3-compatible object storage and restores it from there. It is meant
// to be plugged into archive_command and restore_command; run
// "walship --help" for the postgresql.conf lines.
//
// Exit codes: 0 success; 2 usage or configuration error; 1 any other
// failure — except wal-fetch, whose codes steer PostgreSQL's recovery
// (see "walship wal-fetch --help").
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run executes one walship command and returns its exit code. SIGINT and
// SIGTERM cancel the command; walship then dies of the same signal, so
// PostgreSQL sees what happened (a restore_command killed by SIGTERM must
// not look like "file not found").
func run(args []string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var got os.Signal
	done := make(chan struct{})
	go func() {
		select {
		case got = <-sigs:
			cancel()
		case <-done:
		}
	}()

	a := newApp(stdout, stderr)
	err := a.cli.RunContext(ctx, args)
	close(done)
	signal.Stop(sigs)
	// wal-stream is a service: SIGTERM is how it is stopped, and it
	// stops cleanly (exit 0) once what it received is durable.
	graceful := slices.Contains(args[1:], "wal-stream") && err == nil
	if got != nil && !graceful {
		signal.Reset(got.(syscall.Signal))
		syscall.Kill(os.Getpid(), got.(syscall.Signal))
	}
	code := exitCodeOf(err)
	if slices.Contains(args[1:], "wal-fetch") {
		code = fetchExitCode(err, a.fetchDir)
	}
	if err != nil && !errors.Is(err, errQuiet) {
		a.logError(err)
	}
	a.logResources()
	return code
}

// exitError carries the exit code an error maps to.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return exitError{code, err}
}

func usageError(format string, args ...any) error {
	return exitError{exitUsage, fmt.Errorf(format, args...)}
}

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitFatal is above 125: PostgreSQL treats such a restore_command
	// status like a crash and stops recovery instead of ending it.
	exitFatal = 255
)

func exitCodeOf(err error) int {
	if err == nil {
		return exitOK
	}
	var e exitError
	if errors.As(err, &e) {
		return e.code
	}
	return exitFailure
}
