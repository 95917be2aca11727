//go:build !linux

package s3test

import "syscall"

// sysProcAttr has nothing to add where the kernel cannot tie the child's
// life to ours; the test's cleanup still kills it.
func sysProcAttr() *syscall.SysProcAttr { return nil }
