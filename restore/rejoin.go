package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// SetRestoreCommand writes restore_command into walship's block of
// dataDir/postgresql.auto.conf and leaves the signal files as they are.
// pg_rewind --restore-target-wal asks the target's own configuration for
// restore_command (postgres -C restore_command) to fetch WAL that is no
// longer in pg_wal; a signal file written now would turn the crash
// recovery pg_rewind may run first into an archive recovery or a standby.
func SetRestoreCommand(dataDir, command string) error {
	s := RecoverySettings{Standby: true, RestoreCommand: command}
	if err := s.Validate(); err != nil {
		return err
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
		return fmt.Errorf("%s is not a PostgreSQL data directory (no PG_VERSION): %w", dataDir, err)
	}
	confPath := filepath.Join(dataDir, autoConfName)
	current, err := os.ReadFile(confPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		current = []byte(autoConfHeader)
	case err != nil:
		return fmt.Errorf("read %s: %w", confPath, err)
	}
	if err := writeDataDirFile(dataDir, autoConfName, recoveryConf(current, s), ownerOfDataDir(fi)); err != nil {
		return err
	}
	return syncDataDir(dataDir)
}
