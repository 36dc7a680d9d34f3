//go:build !edgeaudit_unsafe_nosync

package spool

// unsafeNoSync opens bbolt without fsync. It is false in every real build; the build tag
// edgeaudit_unsafe_nosync exists only so that the fsync-ordering test can show that it
// catches a spool that acknowledges before its data is on disk.
const unsafeNoSync = false
