package bench

import "context"

// NewAgentnetEnv starts agentnet: two quicnode nodes and an in-process
// rendezvous. (Placeholder until quicnode lands.)
func NewAgentnetEnv(ctx context.Context) (Env, error) {
	return nil, notSupported("quicnode not available yet")
}

func agentnetRefuser() (childServer, error) {
	return childServer{}, notSupported("quicnode not available yet")
}

func rendezvousChild() (childServer, error) {
	return childServer{}, notSupported("rendezvous not available yet")
}

// RendezvousScale is a placeholder until the rendezvous lands.
func RendezvousScale(ctx context.Context, sz Sizes) ([]float64, error) {
	return nil, notSupported("rendezvous not available yet")
}
