//go:build !linux

package spool

import bolt "go.etcd.io/bbolt"

func readAhead(db *bolt.DB, size int64) {}
