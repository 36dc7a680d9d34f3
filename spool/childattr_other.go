//go:build !linux

package spool

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
