// An A2A server built on the official @a2a-js/sdk (JSON-RPC transport): a
// "shout" agent whose tasks complete with the upper-cased text of the
// user's message as an artifact. It listens on 127.0.0.1 (port 0 unless
// PORT is set) and prints {"port": N} on stdout once it serves.
//
// The agent card's interface URL is built from the request's Host header,
// so a client that reaches the server through "agentnet forward" (or any
// proxy) is told to use that same address, never the server's own.
import express from 'express';
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { TaskState, Role } from '@a2a-js/sdk';
import { DefaultRequestHandler, InMemoryTaskStore, AgentEvent } from '@a2a-js/sdk/server';
import { jsonRpcHandler, agentCardHandler, UserBuilder } from '@a2a-js/sdk/server/express';

const hostOf = new AsyncLocalStorage();

function card(host) {
  return {
    name: 'shout',
    description: 'Upper-cases the text of each message (an agentnet interop test agent).',
    supportedInterfaces: [{ url: `http://${host}/a2a/jsonrpc`, protocolBinding: 'JSONRPC', tenant: '', protocolVersion: '1.0' }],
    provider: undefined,
    version: '1.0.0',
    capabilities: { streaming: false, pushNotifications: false, extensions: [] },
    securitySchemes: {},
    securityRequirements: [],
    defaultInputModes: ['text/plain'],
    defaultOutputModes: ['text/plain'],
    skills: [{ id: 'shout', name: 'shout', description: 'upper-case text', tags: ['text'], examples: ['hello'], inputModes: ['text/plain'], outputModes: ['text/plain'], securityRequirements: [] }],
    signatures: [],
  };
}

const textPart = (value) => ({ content: { $case: 'text', value }, metadata: undefined, filename: '', mediaType: 'text/plain' });

const executor = {
  async execute(ctx, bus) {
    const msg = ctx.userMessage;
    const text = msg.parts.map((p) => (p.content && p.content.$case === 'text' ? p.content.value : '')).join('');
    const status = (state) => ({ state, message: undefined, timestamp: new Date().toISOString() });
    bus.publish(AgentEvent.task({ id: ctx.taskId, contextId: ctx.contextId, status: status(TaskState.TASK_STATE_SUBMITTED), artifacts: [], history: [msg], metadata: undefined }));
    bus.publish(AgentEvent.artifactUpdate({
      taskId: ctx.taskId, contextId: ctx.contextId, append: false, lastChunk: true, metadata: undefined,
      artifact: { artifactId: randomUUID(), name: 'shouted', description: '', parts: [textPart(text.toUpperCase())], metadata: undefined, extensions: [] },
    }));
    bus.publish(AgentEvent.statusUpdate({ taskId: ctx.taskId, contextId: ctx.contextId, status: status(TaskState.TASK_STATE_COMPLETED), metadata: undefined }));
    bus.finished();
  },
  async cancelTask() {},
};

// The request handler needs a card for its own checks; the served card is
// built per request below.
const handler = new DefaultRequestHandler(card('127.0.0.1'), new InMemoryTaskStore(), executor);
const app = express();
app.use((req, res, next) => hostOf.run(req.headers.host || '127.0.0.1', next));
app.use('/.well-known/agent-card.json', agentCardHandler({ agentCardProvider: async () => card(hostOf.getStore()), cache: { maxAge: 0 } }));
app.use('/a2a/jsonrpc', jsonRpcHandler({ requestHandler: handler, userBuilder: UserBuilder.noAuthentication }));
const srv = app.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: srv.address().port, role: Role.ROLE_AGENT ? 'a2a' : 'a2a' }) + '\n');
});
process.on('SIGTERM', () => srv.close(() => process.exit(0)));
