//go:build !linux

package s3test

import "syscall"

// sysProcAttr has nothing to add where the kernel cannot tie the child's
// life to ours; the test's cleanup still kills it.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// waitStopped cannot look at the threads' state here; a paused server may
// answer a request or two before SIGSTOP lands.
func waitStopped(int) error { return nil }
