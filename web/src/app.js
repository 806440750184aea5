// The softphone page hedgewitch serves: log in with the SIP account, call people of the
// domain (by name, extension or number) or anyone by SIP URI, answer, hold, mute, send DTMF,
// exchange messages. Signalling is SIP over the WebSocket of the page's own origin (JsSIP);
// media is WebRTC (DTLS-SRTP, end to end), through the server's TURN relay when the network
// needs it. The TURN credentials and the directory come from the server after login, in the
// answer to an authenticated OPTIONS: no password other than the user's own is in the page.
//
// `window.hw` exposes the page's state for the end-to-end tests and for curious users.

import JsSIP from 'jssip';

const SESSION_INFO = 'application/vnd.hedgewitch.session+json';
const $ = (id) => document.getElementById(id);

const hw = {
  domain: '',
  ua: null,
  info: null, // { user, extension, display, directory: [...], turn: {...} | null }
  session: null,
  state: 'logged-out', // logged-out | logging-in | idle | calling | incoming | in-call | held
  muted: false,
  lastError: null,
  messages: [], // { from, body, direction: 'in' | 'out', failed? }
  relayOnly: new URLSearchParams(location.search).get('relay') === '1',
  stats,
};
window.hw = hw;

// ---------------------------------------------------------------- page state

function setState(state, text) {
  hw.state = state;
  if (text) $('status').textContent = text;
  const inCall = state === 'in-call' || state === 'held' || state === 'calling';
  $('in-call').hidden = !inCall;
  $('incoming').hidden = state !== 'incoming';
  $('dial').hidden = inCall || state === 'incoming';
  $('hold').textContent = state === 'held' ? 'Resume' : 'Hold';
  $('mute').textContent = hw.muted ? 'Unmute' : 'Mute';
  if (state !== 'incoming') stopRinging();
}

function notice(text) {
  hw.lastError = text;
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

// ---------------------------------------------------------------- login

async function boot() {
  try {
    const cfg = await (await fetch('config.json', { cache: 'no-store' })).json();
    hw.domain = cfg.domain;
  } catch {
    notice('Cannot reach the server.');
  }
  document.querySelectorAll('.domain').forEach((e) => { e.textContent = hw.domain; });
  $('login').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('dial').addEventListener('submit', (e) => { e.preventDefault(); call($('target').value, false); });
  $('call-video').addEventListener('click', () => call($('target').value, true));
  $('answer').addEventListener('click', () => answer(false));
  $('answer-video').addEventListener('click', () => answer(true));
  $('decline').addEventListener('click', decline);
  $('hangup').addEventListener('click', hangup);
  $('hold').addEventListener('click', toggleHold);
  $('mute').addEventListener('click', toggleMute);
  $('chat').addEventListener('submit', (e) => { e.preventDefault(); sendMessage($('chat-to').value, $('chat-text').value); });
  for (const key of '123456789*0#') {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = key;
    b.addEventListener('click', () => keypad(key));
    $('keypad').appendChild(b);
  }
}

function login(ev) {
  ev.preventDefault();
  notice('');
  const user = $('user').value.trim();
  const uri = user.includes('@') ? `sip:${user.replace(/^sips?:/, '')}` : `sip:${user}@${hw.domain}`;
  const ws = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
  let ua;
  try {
    ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(ws)],
      uri,
      password: $('password').value,
      display_name: $('display').value.trim() || undefined,
      register: true,
      session_timers: false,
      user_agent: 'hedgewitch softphone (JsSIP)',
    });
  } catch {
    notice('That is not a user name this server knows how to use.');
    return;
  }
  hw.ua = ua;
  hw.state = 'logging-in';
  $('login-button').disabled = true;
  ua.on('registered', onRegistered);
  ua.on('registrationFailed', (e) => {
    const status = e.response ? e.response.status_code : 0;
    if (status === 401 || status === 403 || status === 407) {
      notice('Wrong user name or password.');
    } else if (e.cause === JsSIP.C.causes.CONNECTION_ERROR || e.cause === JsSIP.C.causes.REQUEST_TIMEOUT) {
      notice('Cannot reach the server.');
    } else {
      notice(`Login failed: ${e.cause}.`);
    }
    logout();
  });
  ua.on('disconnected', () => {
    if (hw.state !== 'logged-out' && hw.state !== 'logging-in') notice('Connection to the server lost; trying again…');
  });
  ua.on('connected', () => { if (hw.lastError && hw.lastError.startsWith('Connection to the server lost')) notice(''); });
  ua.on('newRTCSession', onSession);
  ua.on('newMessage', onMessage);
  ua.start();
}

async function onRegistered() {
  if (hw.state !== 'logging-in') return;
  $('login').hidden = true;
  $('phone').hidden = false;
  $('logout').hidden = false;
  $('login-button').disabled = false;
  $('who').textContent = String(hw.ua.get('uri'));
  setState('idle', 'Ready');
  hw.info = await sessionInfo();
  renderDirectory();
}

function logout() {
  if (hw.ua) {
    const ua = hw.ua;
    hw.ua = null;
    ua.stop();
  }
  hw.state = 'logged-out';
  $('login-button').disabled = false;
  $('login').hidden = false;
  $('phone').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
}

// What the server tells a logged-in user: who they are, the directory, TURN credentials.
function sessionInfo() {
  return new Promise((resolve) => {
    // A URI object: JsSIP would read a bare `sip:domain` string as a user at our domain.
    hw.ua.sendOptions(new JsSIP.URI('sip', null, hw.domain), null, {
      extraHeaders: [`Accept: ${SESSION_INFO}`],
      eventHandlers: {
        succeeded: (e) => {
          try { resolve(JSON.parse(e.response.body)); } catch { resolve(null); }
        },
        failed: () => resolve(null),
      },
    });
  });
}

function renderDirectory() {
  const list = $('directory');
  list.textContent = '';
  const people = (hw.info && hw.info.directory) || [];
  for (const p of people) {
    if (hw.info && p.name === hw.info.user) continue;
    const li = document.createElement('li');
    const label = document.createElement('span');
    label.textContent = p.display || p.name;
    if (p.extension) label.textContent += ` (${p.extension})`;
    const b = document.createElement('button');
    b.textContent = 'Call';
    b.addEventListener('click', () => call(p.name, false));
    const m = document.createElement('button');
    m.textContent = 'Message';
    m.addEventListener('click', () => { $('chat-to').value = p.name; $('chat-text').focus(); });
    li.append(label, b, m);
    list.appendChild(li);
  }
}

// ---------------------------------------------------------------- calls

// A name, extension or number of the domain, or a SIP URI elsewhere.
function targetUri(text) {
  const t = text.trim().replace(/\s+/g, '');
  if (!t) return null;
  if (/^sips?:/i.test(t)) return t;
  if (t.includes('@')) return `sip:${t}`;
  return `sip:${t}@${hw.domain}`;
}

function pcConfig() {
  const turn = hw.info && hw.info.turn;
  return {
    iceServers: turn ? [{ urls: turn.urls, username: turn.username, credential: turn.credential }] : [],
    iceTransportPolicy: hw.relayOnly ? 'relay' : 'all',
    // `balanced` (not max-bundle): a SIP phone's answer may decline BUNDLE.
    bundlePolicy: 'balanced',
    rtcpMuxPolicy: 'require',
  };
}

function call(text, video) {
  const uri = targetUri(text);
  if (!uri || !hw.ua) return;
  notice('');
  hw.muted = false;
  setState('calling', `Calling ${text.trim()}…`);
  try {
    hw.ua.call(uri, { mediaConstraints: { audio: true, video }, pcConfig: pcConfig() });
  } catch (e) {
    setState('idle', 'Ready');
    notice(`Cannot call ${text.trim()}: ${e.message}`);
  }
}

function onSession(e) {
  const session = e.session;
  if (hw.session && hw.session !== session) {
    // One call at a time: a second caller hears busy.
    if (e.originator === 'remote') session.terminate({ status_code: 486, reason_phrase: 'Busy Here' });
    return;
  }
  hw.session = session;
  if (session.connection) watchMedia(session.connection);
  else session.on('peerconnection', (p) => watchMedia(p.peerconnection));
  const peer = e.originator === 'remote' ? describe(e.request.from) : '';
  if (e.originator === 'remote') {
    $('caller').textContent = peer;
    setState('incoming', `Incoming call from ${peer}`);
    startRinging();
  }
  // JsSIP sends its SDP when ICE gathering completes, which a firewall that swallows UDP
  // to the TURN server delays by half a minute. A relay candidate always works: send soon
  // after the first one, and at the latest two seconds after the first candidate of all.
  let iceTimer = null;
  session.on('icecandidate', (c) => {
    if (/ typ relay /.test(c.candidate.candidate)) {
      clearTimeout(iceTimer);
      iceTimer = setTimeout(c.ready, 300);
    } else if (!iceTimer) {
      iceTimer = setTimeout(c.ready, 2000);
    }
  });
  // Kept for the curious (and the tests): what the other side's SDP said, and why the
  // browser refused it.
  session.on('sdp', (x) => { if (x.originator === 'remote') hw.remoteSdp = x.sdp; });
  session.on('peerconnection:setremotedescriptionfailed', (err) => {
    hw.sdpError = String((err && err.message) || err);
  });
  session.on('progress', () => { if (hw.state === 'calling') $('status').textContent = 'Ringing…'; });
  session.on('accepted', () => setState('in-call', 'In call'));
  session.on('confirmed', () => { if (hw.state !== 'held') setState('in-call', 'In call'); });
  session.on('hold', (h) => { if (h.originator === 'local') setState('held', 'On hold'); });
  session.on('unhold', (h) => { if (h.originator === 'local') setState('in-call', 'In call'); });
  session.on('ended', (x) => finished(session, `Call ended${x.originator === 'remote' ? ' by the other side' : ''}.`));
  session.on('failed', (x) => {
    if (x.originator === 'remote' && e.originator === 'remote' && x.cause === JsSIP.C.causes.CANCELED) {
      finished(session, `Missed call from ${peer}.`);
      return;
    }
    finished(session, 'Ready');
    const why = failure(x.cause, x.message);
    if (why) notice(why);
  });
}

// Why a call failed, in words for people.
function failure(cause, response) {
  const C = JsSIP.C.causes;
  switch (cause) {
    case C.USER_DENIED_MEDIA_ACCESS:
      return 'The browser refused the microphone (or camera): allow it for this page to make and answer calls.';
    case C.NOT_FOUND:
      return 'Nobody by that name or number.';
    case C.UNAVAILABLE:
      return 'Not available: offline, or not answering now.';
    case C.BUSY:
      return 'Busy.';
    case C.REJECTED:
      return 'The call was declined.';
    case C.INCOMPATIBLE_SDP:
    case C.BAD_MEDIA_DESCRIPTION:
    case C.MISSING_SDP:
      return 'That phone cannot encrypt media the way browsers do (DTLS-SRTP), so no call is possible with it from here. Call it from a SIP phone instead.';
    case C.ADDRESS_INCOMPLETE:
      return 'That number is incomplete.';
    case C.CONNECTION_ERROR:
    case C.REQUEST_TIMEOUT:
      return 'Cannot reach the server.';
    case C.RTP_TIMEOUT:
      return 'The call lost its media connection.';
    case C.CANCELED:
    case C.BYE:
      return null;
    default:
      return response && response.status_code ? `The call failed: ${response.status_code} ${response.reason_phrase}.` : `The call failed (${cause}).`;
  }
}

function finished(session, text) {
  if (hw.session !== session) return;
  hw.session = null;
  hw.muted = false;
  for (const id of ['remote-video', 'local-video']) {
    $(id).srcObject = null;
    delete $(id).dataset.live;
  }
  $('remote-audio').srcObject = null;
  setState('idle', text);
}

function watchMedia(pc) {
  pc.addEventListener('track', (t) => {
    const stream = t.streams[0] || new MediaStream([t.track]);
    if (t.track.kind === 'video') {
      $('remote-video').srcObject = stream;
      $('remote-video').dataset.live = '1';
    } else {
      $('remote-audio').srcObject = stream;
    }
  });
}

function answer(video) {
  const s = hw.session;
  if (!s || hw.state !== 'incoming') return;
  stopRinging();
  setState('in-call', 'Connecting…');
  s.answer({ mediaConstraints: { audio: true, video }, pcConfig: pcConfig() });
}

function decline() {
  if (hw.session && hw.state === 'incoming') hw.session.terminate({ status_code: 603, reason_phrase: 'Decline' });
}

function hangup() {
  if (hw.session) hw.session.terminate();
}

function toggleHold() {
  const s = hw.session;
  if (!s) return;
  if (hw.state === 'held') s.unhold(); else s.hold();
}

function toggleMute() {
  const s = hw.session;
  if (!s) return;
  hw.muted = !hw.muted;
  if (hw.muted) s.mute({ audio: true }); else s.unmute({ audio: true });
  setState(hw.state);
}

// DTMF: in the media (RFC 4733) when the call negotiated it, else SIP INFO.
function keypad(key) {
  const s = hw.session;
  if (!s || hw.state !== 'in-call') {
    $('target').value += key;
    return;
  }
  const sender = s.connection && s.connection.getSenders().find((x) => x.track && x.track.kind === 'audio');
  const inMedia = sender && sender.dtmf && sender.dtmf.canInsertDTMF;
  s.sendDTMF(key, { transportType: inMedia ? JsSIP.C.DTMF_TRANSPORT.RFC2833 : JsSIP.C.DTMF_TRANSPORT.INFO });
}

function describe(nameAddr) {
  const uri = nameAddr.uri.toString();
  return nameAddr.display_name ? `${nameAddr.display_name} <${uri}>` : uri;
}

// ---------------------------------------------------------------- ringing

let ringing = null;
function startRinging() {
  try {
    const ctx = new AudioContext();
    const beep = () => {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.frequency.value = 440;
      g.gain.value = 0.08;
      o.connect(g).connect(ctx.destination);
      o.start();
      o.stop(ctx.currentTime + 0.8);
    };
    beep();
    ringing = { ctx, timer: setInterval(beep, 2500) };
  } catch {
    ringing = null;
  }
}

function stopRinging() {
  if (!ringing) return;
  clearInterval(ringing.timer);
  ringing.ctx.close();
  ringing = null;
}

// ---------------------------------------------------------------- messages

function onMessage(e) {
  if (e.originator !== 'remote') return;
  addMessage({ from: describe(e.request.from), body: e.request.body || '', direction: 'in' });
}

function sendMessage(to, text) {
  const uri = targetUri(to);
  if (!uri || !text || !hw.ua) return;
  const m = { from: 'me', to: to.trim(), body: text, direction: 'out' };
  addMessage(m);
  $('chat-text').value = '';
  hw.ua.sendMessage(uri, text, {
    eventHandlers: {
      failed: (x) => {
        m.failed = x.response ? `${x.response.status_code} ${x.response.reason_phrase}` : x.cause;
        renderMessages();
      },
    },
  });
}

function addMessage(m) {
  hw.messages.push(m);
  renderMessages();
}

function renderMessages() {
  const list = $('messages');
  list.textContent = '';
  for (const m of hw.messages) {
    const li = document.createElement('li');
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = m.direction === 'in' ? m.from : `to ${m.to}`;
    const body = document.createElement('span');
    body.textContent = m.body;
    li.append(who, body);
    if (m.failed) {
      const f = document.createElement('span');
      f.className = 'failed';
      f.textContent = ` (not delivered: ${m.failed})`;
      li.append(f);
    }
    list.appendChild(li);
  }
  list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------- statistics (tests)

// What the call's media is doing: RTP packets received, the DTLS state, and the kinds of
// the candidates ICE chose (`relay` when the media goes through TURN).
async function stats() {
  const pc = hw.session && hw.session.connection;
  if (!pc) return null;
  const report = await pc.getStats();
  const out = { inboundPackets: 0, videoPackets: 0, dtlsState: null, local: null, remote: null };
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') out.inboundPackets += s.packetsReceived || 0;
    if (s.type === 'inbound-rtp' && s.kind === 'video') out.videoPackets += s.packetsReceived || 0;
    if (s.type === 'transport') {
      out.dtlsState = s.dtlsState;
      pair = s.selectedCandidatePairId;
    }
  });
  const selected = pair && report.get(pair);
  if (selected) {
    out.local = (report.get(selected.localCandidateId) || {}).candidateType || null;
    out.remote = (report.get(selected.remoteCandidateId) || {}).candidateType || null;
    out.localProtocol = (report.get(selected.localCandidateId) || {}).relayProtocol || null;
  }
  return out;
}

boot();
