package s3test

import "syscall"

// sysProcAttr asks the kernel to kill MinIO when the test binary dies
// without running its cleanups (a panic, a -timeout), so no server
// outlives the tests. Linux ties this to the thread that started the
// child, and Go ends a thread only when a goroutine that locked it with
// runtime.LockOSThread exits without unlocking, which tests here do not do.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
