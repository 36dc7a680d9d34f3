// Package diskspace reports the size and free space of the file system holding a
// folder, the one question health and the spool's room ask of the operating system.
package diskspace

// Usage is a file system's size and what an unprivileged writer may still use of it.
type Usage struct {
	Total, Free int64
}
