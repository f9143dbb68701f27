package mcpserver

import (
	"context"
	"encoding/json"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Resource URIs.
const (
	ResourceStatus = "agentnet://status"
	ResourceTrust  = "agentnet://trust"
	ResourcePeers  = "agentnet://peers"
	ResourceInbox  = "agentnet://inbox"
)

// addResources registers the read-only resources: the same JSON as the
// status, trust_list, peers and inbox_list tools.
func (s *Server) addResources() {
	add := func(uri, name, desc string, read func(ctx context.Context) (any, error)) {
		s.mcp.AddResource(&mcp.Resource{URI: uri, Name: name, Description: desc, MIMEType: "application/json"},
			func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
				v, err := read(ctx)
				if err != nil {
					return nil, s.asToolError(err)
				}
				b, err := json.Marshal(v)
				if err != nil {
					return nil, err
				}
				return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, MIMEType: "application/json", Text: string(b)}}}, nil
			})
	}
	add(ResourceStatus, "status", "This agent's address, key, hostname, rendezvous, NAT and counters (as the status tool).",
		func(ctx context.Context) (any, error) { return s.callStatus(ctx) })
	add(ResourceTrust, "trust", "Every trust record (as trust_list); peers' notes under untrusted.",
		func(ctx context.Context) (any, error) { return s.trustRecords(ctx, "/v1/trust") })
	add(ResourcePeers, "peers", "Live peer connections (as the peers tool).",
		func(ctx context.Context) (any, error) { return s.peers(ctx) })
	add(ResourceInbox, "inbox", "Messages and files received, without content (as inbox_list); file names under untrusted.",
		func(ctx context.Context) (any, error) { return s.inboxList(ctx) })
}
