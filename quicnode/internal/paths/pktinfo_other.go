//go:build !linux

package paths

func leadingPktinfo(oob []byte) int { return 0 }

func sourceGone(err error) bool { return false }

func unroutable(err error) bool { return false }
