//go:build !linux

package tls

// trustPrecheck has nothing to add outside Linux: truststore's own errors
// are clear there.
func trustPrecheck() error { return nil }
