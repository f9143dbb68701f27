//go:build tools

// Package tools pins module dependencies that are not yet imported by code.
package tools

import (
	_ "github.com/hashicorp/golang-lru/v2"
	_ "github.com/pion/stun/v3"
	_ "github.com/quic-go/quic-go"
	_ "github.com/stretchr/testify/require"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/crypto/hkdf"
	_ "golang.org/x/sys/unix"
)
