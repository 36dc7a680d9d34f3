//go:build !linux

package main

// isTerminal is false off Linux: progress lines are only drawn on a Linux terminal
// (the appliance's platform); the summary at the end is printed everywhere.
func isTerminal(fd uintptr) bool { return false }
