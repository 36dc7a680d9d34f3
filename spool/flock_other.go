//go:build !unix

package spool

import (
	"errors"
	"os"
)

const backgroundCheckSupported = false

func unlockFile(*os.File) error { return errors.New("unlock: not supported here") }
