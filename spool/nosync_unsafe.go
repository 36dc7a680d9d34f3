//go:build edgeaudit_unsafe_nosync

package spool

// unsafeNoSync: see nosync.go. A binary built with this tag loses acknowledged events on
// power loss; it is built only by the fsync-ordering test, as its negative control.
const unsafeNoSync = true
