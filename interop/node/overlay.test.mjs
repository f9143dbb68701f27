// MCP and A2A over the overlay with the official clients: bob serves an MCP
// server (Go SDK, streamable HTTP) and an A2A server (@a2a-js/sdk) on
// virtual ports with "agentnet expose"; alice reaches them through
// "agentnet forward" on 127.0.0.1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientFactory } from '@a2a-js/sdk/client';
import { TaskState, Role } from '@a2a-js/sdk';
import { fx, skip } from './env.mjs';

test('MCP TypeScript client → forward → overlay → Go SDK MCP server: initialize, tools/list, tools/call', { skip, timeout: 60_000 }, async () => {
  const client = new Client({ name: 'node-over-overlay', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(fx.mcp_url)));
  try {
    assert.equal(client.getServerVersion().name, 'bob-tools');
    const { tools } = await client.listTools();
    assert.deepEqual(tools.map((t) => t.name), ['add']);
    const res = await client.callTool({ name: 'add', arguments: { a: 2, b: 3 } });
    assert.ok(!res.isError);
    assert.equal(res.structuredContent.sum, 5);
  } finally {
    await client.close();
  }
});

test('A2A client → forward → overlay → @a2a-js/sdk server: agent card, message, task result', { skip, timeout: 60_000 }, async () => {
  const client = await new ClientFactory().createFromUrl(fx.a2a_url);
  const res = await client.sendMessage({ message: { messageId: 'm-node', role: Role.ROLE_USER, parts: [{ content: { $case: 'text', value: 'hello bob' } }] } });
  // The card told the client to use the forward's address, not bob's own.
  assert.equal(res.status.state, TaskState.TASK_STATE_COMPLETED);
  assert.equal(res.artifacts[0].parts[0].content.value, 'HELLO BOB');
  const task = await client.getTask({ id: res.id, historyLength: 1 });
  assert.equal(task.status.state, TaskState.TASK_STATE_COMPLETED);
});
