// A JsSIP user agent without media, for hedgewitch's end-to-end tests: it registers over a
// SIP WebSocket and sends and receives instant messages, driven by JSON lines on stdin and
// reporting JSON lines on stdout. Run with Node's WebSocket enabled:
//   node --experimental-websocket test/jssip-agent.cjs '{"url":"ws://127.0.0.1:8080","uri":"sip:alice@example.test","password":"..."}'
// Commands: {"cmd":"message","to":URI,"body":TEXT}, {"cmd":"unregister"}, {"cmd":"quit"}.
// Events: registered, registrationFailed, unregistered, message, sent, failed, disconnected.
'use strict';
const JsSIP = require('jssip');
const readline = require('node:readline');

const opts = JSON.parse(process.argv[2] || '{}');
const say = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(opts.url)],
  uri: opts.uri,
  password: opts.password,
  display_name: opts.display || undefined,
  register: opts.register !== false,
  connection_recovery_min_interval: 2,
  connection_recovery_max_interval: 4,
});

// The GRUUs are those JsSIP itself took from the answer (RFC 5627), for its own contact.
ua.on('registered', (e) => say('registered', {
  status: e.response.status_code,
  require: e.response.getHeader('Require') || null,
  pub_gruu: ua.contact.pub_gruu || null,
  temp_gruu: ua.contact.temp_gruu || null,
}));
ua.on('registrationFailed', (e) => say('registrationFailed', { cause: e.cause, status: e.response ? e.response.status_code : null }));
ua.on('unregistered', () => say('unregistered'));
ua.on('disconnected', () => say('disconnected'));
ua.on('newMessage', (e) => {
  if (e.originator !== 'remote') return;
  say('message', { from: e.request.from.uri.toString(), display: e.request.from.display_name || null, body: e.request.body });
});

ua.start();

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let c;
  try { c = JSON.parse(line); } catch { return; }
  if (c.cmd === 'message') {
    ua.sendMessage(c.to, c.body, {
      eventHandlers: {
        succeeded: (e) => say('sent', { status: e.response.status_code }),
        failed: (e) => say('failed', { cause: e.cause, status: e.response ? e.response.status_code : null }),
      },
    });
  } else if (c.cmd === 'unregister') {
    ua.unregister();
  } else if (c.cmd === 'quit') {
    ua.stop();
    setTimeout(() => process.exit(0), 300);
  }
});
