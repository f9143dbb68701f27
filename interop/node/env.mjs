// The fixture "go test ./cmd/agentnet -run TestInterop" sets up: the
// agentnet binary, daemons (state directories under AGENTNET_HOME), and the
// overlay services. Without it the tests skip: run them through go test.
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';

export const fx = process.env.AGENTNET_INTEROP ? JSON.parse(process.env.AGENTNET_INTEROP) : null;
export const skip = fx ? false : 'run through go test ./cmd/agentnet -run TestInterop (AGENTNET_INTEROP not set)';

// mcpClient starts "agentnet mcp" for a daemon with the official client.
export async function mcpClient(state, args = [], capabilities = {}) {
  const env = { ...fx.env, AGENTNET_STATE: `${fx.home}/${state}` };
  const transport = new StdioClientTransport({ command: fx.bin, args: ['mcp', ...args], env, stderr: 'pipe' });
  const client = new Client({ name: 'agentnet-node-test', version: '1.0.0' }, { capabilities });
  await client.connect(transport);
  return client;
}

// ok calls a tool, requires success, and returns its structured content.
export async function ok(assert, client, name, args = {}) {
  const res = await client.callTool({ name, arguments: args });
  assert.ok(!res.isError, `${name}: ${res.content?.[0]?.text}`);
  assert.deepStrictEqual(JSON.parse(res.content[0].text), res.structuredContent, 'text content is the structured content');
  return res.structuredContent;
}

// fail calls a tool and requires it to fail with code; returns the error.
export async function fail(assert, client, name, args, code) {
  const res = await client.callTool({ name, arguments: args });
  assert.ok(res.isError, `${name} should fail: ${res.content?.[0]?.text}`);
  const e = JSON.parse(res.content[0].text).error;
  assert.strictEqual(e.code, code, `${name}: ${res.content[0].text}`);
  return e;
}

// sseJSON returns the JSON-RPC messages of an MCP answer body (JSON or SSE).
export function rpcMessages(body) {
  const t = body.trim();
  if (t.startsWith('{') || t.startsWith('[')) return [JSON.parse(t)].flat();
  return t.split('\n').filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)));
}
