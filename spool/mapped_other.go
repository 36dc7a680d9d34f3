//go:build !linux

package spool

import "time"

// dropInterval: elsewhere the mapped pages are left to the system.
const dropInterval = time.Hour

func (s *Spool) dropMapped() {}
