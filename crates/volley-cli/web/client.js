// The demo's client: Centrifugo's client protocol (v2, JSON) with reconnects and
// recovery, over WebSocket or, where the page has no WebSocket or the network blocks
// it, over the hub's emulation of it: HTTP streaming, SSE, then long polling. Small on
// purpose; for applications, centrifuge-js speaks the same protocol with every feature.
//
//   const hub = new HubClient(url, { getToken: async () => token });   // url: the WebSocket endpoint
//   hub.on('state', (state) => ...);             // 'connecting' | 'connected' | 'disconnected'
//   hub.transportName                            // 'websocket' | 'http_stream' | 'sse' | 'long_poll'
//   const sub = hub.subscribe('chat:lobby', { onPublication, onJoin, onLeave, onSubscribed });
//   await hub.connect();
//   await sub.publish({ text: 'hi' }); await sub.presence(); await sub.history(20);
//
// The transports are tried in order. One the page lacks is skipped; one that ends
// before the hub answered the connect (a proxy that refuses the WebSocket upgrade, a
// stream that never starts) gives way to the next at once. Once one has worked, the
// client reconnects over it, and every subscription resumes from its last position.

/** The transports, in the order they are tried. */
export const TRANSPORTS = ['websocket', 'http_stream', 'sse', 'long_poll'];

// What each transport needs of the page.
const AVAILABLE = {
  websocket: () => typeof WebSocket === 'function',
  http_stream: () => typeof fetch === 'function' && typeof TextDecoder === 'function'
    && typeof ReadableStream === 'function' && typeof Response === 'function' && 'body' in Response.prototype,
  sse: () => typeof EventSource === 'function',
  long_poll: () => typeof fetch === 'function',
};

/** Whether the page has what `name` needs. */
export function transportAvailable(name) {
  return Boolean(AVAILABLE[name]?.());
}

// A connection to the hub over one transport. `open(connect)` sends the connect command
// (a JSON string); `send(text)` a later command; every reply and push goes to
// `client.received(msg)`; the end, once, to `client.transportClosed(transport, { code, reason })`.
// `opened` turns true with the first thing the hub sent.
class Transport {
  constructor(name, client) {
    this.name = name;
    this.client = client;
    this.base = client.base;
    this.opened = false;
    this.done = false;
    this.session = '';
    this.node = '';
    this.disconnect = null;
  }

  // One reply or push, as a line of JSON.
  receive(line) {
    if (!line || this.done) return;
    const msg = JSON.parse(line);
    this.opened = true;
    if (msg.connect) {
      // The emulation's session and node, for the commands that follow.
      this.session = msg.connect.session || '';
      this.node = msg.connect.node || '';
    }
    if (msg.push?.disconnect) this.disconnect = msg.push.disconnect;
    this.client.received(msg);
  }

  end(code = 0, reason = '') {
    if (this.done) return;
    this.done = true;
    if (this.disconnect) ({ code, reason } = this.disconnect);
    this.client.transportClosed(this, { code, reason });
  }
}

class WebSocketTransport extends Transport {
  open(connect) {
    let ws;
    try {
      ws = new WebSocket(this.client.url);
    } catch (e) {
      queueMicrotask(() => this.end(0, String(e)));
      return;
    }
    this.ws = ws;
    ws.onopen = () => ws.send(connect);
    ws.onmessage = (e) => { for (const line of String(e.data).split('\n')) this.receive(line); };
    ws.onclose = (e) => this.end(e.code, e.reason);
  }

  send(text) {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new Error('not connected');
    this.ws.send(text);
  }

  close(code) {
    this.ws?.close(code);
  }
}

// The emulation transports: the hub's replies come over a stream (or polls), the
// client's commands go to POST /emulation, one request after another, in order.
class EmulationTransport extends Transport {
  constructor(name, client) {
    super(name, client);
    this.abort = new AbortController();
    this.queue = Promise.resolve();
  }

  send(text) {
    if (this.done || !this.session) throw new Error('not connected');
    const body = JSON.stringify({ session: this.session, node: this.node, data: text });
    this.queue = this.queue.then(async () => {
      if (this.done) return;
      try {
        const r = await fetch(`${this.base}/emulation`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body, cache: 'no-store',
        });
        // 404: the session is gone (expired, or its node is): reconnect.
        if (!r.ok) this.close();
      } catch (e) {
        this.close();
      }
    });
  }

  close(code = 0) {
    this.abort.abort();
    this.end(code);
  }
}

class HttpStreamTransport extends EmulationTransport {
  async open(connect) {
    try {
      const r = await fetch(`${this.base}/connection/http_stream`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: connect,
        cache: 'no-store', signal: this.abort.signal,
      });
      if (!r.ok || typeof r.body?.getReader !== 'function') throw new Error(`http_stream: ${r.status}`);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          this.receive(line);
        }
      }
    } catch (e) {
      // Aborted, refused, or cut: the end below says so.
    }
    this.end();
  }
}

class SseTransport extends EmulationTransport {
  open(connect) {
    const es = new EventSource(`${this.base}/connection/sse?cf_connect=${encodeURIComponent(connect)}`);
    this.es = es;
    es.onmessage = (e) => this.receive(e.data);
    // EventSource would reconnect by itself with the same connect: the client does.
    es.onerror = () => { es.close(); this.end(); };
  }

  close(code = 0) {
    this.es?.close();
    super.close(code);
  }
}

class LongPollTransport extends EmulationTransport {
  async open(connect) {
    const opts = { cache: 'no-store', signal: this.abort.signal };
    try {
      // The connect is answered as a poll; then poll again as soon as each answer came.
      let r = await fetch(`${this.base}/connection/long_poll`, {
        ...opts, method: 'POST', headers: { 'Content-Type': 'application/json' }, body: connect,
      });
      for (;;) {
        if (r.status === 200) {
          for (const line of (await r.text()).split('\n')) this.receive(line);
        } else if (r.status !== 204) {
          break; // 404: the session is over; 504: its node did not answer.
        }
        if (this.done || !this.session) break;
        const q = `session=${encodeURIComponent(this.session)}&node=${encodeURIComponent(this.node)}`;
        r = await fetch(`${this.base}/connection/long_poll?${q}`, opts);
      }
    } catch (e) {
      // Aborted, refused, or cut.
    }
    this.end();
  }
}

const MAKE = {
  websocket: (c) => new WebSocketTransport('websocket', c),
  http_stream: (c) => new HttpStreamTransport('http_stream', c),
  sse: (c) => new SseTransport('sse', c),
  long_poll: (c) => new LongPollTransport('long_poll', c),
};

export class HubClient {
  constructor(url, { getToken = null, minDelay = 200, maxDelay = 5000, transports = TRANSPORTS } = {}) {
    this.url = url;
    // The emulation's endpoints are the WebSocket endpoint's HTTP siblings.
    this.base = url.replace(/^ws/, 'http').replace(/\/connection\/websocket$/, '');
    this.transports = transports;
    this.getToken = getToken;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.state = 'disconnected';
    this.transport = null;
    this.transportName = '';
    this.index = 0; // the transport to try next
    this.nextId = 1;
    this.pending = new Map();
    this.subs = new Map();
    this.handlers = {};
    this.attempt = 0;
    this.closed = true;
    this.clientId = '';
  }

  on(event, fn) {
    (this.handlers[event] ||= []).push(fn);
    return this;
  }

  emit(event, ...args) {
    for (const fn of this.handlers[event] || []) fn(...args);
  }

  setState(state, detail) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state, detail);
  }

  async connect() {
    this.closed = false;
    this.open();
  }

  disconnect() {
    this.closed = true;
    clearTimeout(this.retry);
    this.transport?.close(1000);
    this.setState('disconnected');
  }

  async open() {
    this.setState('connecting');
    while (this.index < this.transports.length && !transportAvailable(this.transports[this.index])) this.index++;
    const name = this.transports[this.index];
    if (!name) {
      this.index = 0;
      this.setState('disconnected', { code: 0, reason: 'no transport available' });
      return;
    }
    let token = '';
    try {
      token = this.getToken ? await this.getToken() : '';
    } catch (e) {
      this.reconnect();
      return;
    }
    if (this.closed) return;
    const t = MAKE[name](this);
    this.transport = t;
    const id = this.nextId++;
    const answered = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, key: 'connect' }));
    t.open(JSON.stringify({ id, connect: { token, name: 'volley-demo' } }));
    try {
      const result = await answered;
      this.clientId = result.client;
      this.attempt = 0;
      this.pongs = result.pong;
      this.transportName = name;
      this.setState('connected', { ...result, transport: name });
      for (const sub of this.subs.values()) sub.send();
    } catch (e) {
      if (this.transport === t && e.code) t.close(3000);
    }
  }

  reconnect(detail) {
    this.setState('connecting', detail);
    const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt++) * (0.5 + Math.random() / 2);
    this.retry = setTimeout(() => this.open(), delay);
  }

  transportClosed(t, { code, reason }) {
    if (this.transport !== t) return;
    this.transport = null;
    for (const { reject } of this.pending.values()) reject(new Error('disconnected'));
    this.pending.clear();
    for (const sub of this.subs.values()) sub.subscribed = false;
    // The protocol's rule: 3500-3999 and 4500-4999 mean "do not reconnect".
    const terminal = (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);
    if (this.closed || terminal) {
      this.setState('disconnected', { code, reason });
      return;
    }
    if (!t.opened) {
      // Nothing came through: the next transport, at once; after the last, the first
      // again, after a while.
      this.index++;
      if (this.transports.slice(this.index).some(transportAvailable)) {
        this.setState('connecting', { code, reason });
        this.retry = setTimeout(() => this.open(), 0);
        return;
      }
      this.index = 0;
    }
    this.reconnect({ code, reason });
  }

  received(msg) {
    if (!msg.id && !msg.push && !msg.error) {
      // The server's ping: answer with a pong.
      if (this.pongs && this.transport) {
        try { this.transport.send('{}'); } catch (e) { /* closing */ }
      }
      return;
    }
    if (msg.id) {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(Object.assign(new Error(msg.error.message), msg.error));
      else p.resolve(msg[p.key] || {});
      return;
    }
    const push = msg.push;
    const sub = this.subs.get(push.channel);
    if (!sub) return;
    if (push.pub) sub.publication(push.pub);
    else if (push.join) sub.opts.onJoin?.(push.join.info);
    else if (push.leave) sub.opts.onLeave?.(push.leave.info);
    else if (push.unsubscribe) {
      sub.subscribed = false;
      // 2500-2999: resubscribe (with recovery).
      if (push.unsubscribe.code >= 2500) sub.send();
    }
  }

  call(command, key) {
    const t = this.transport;
    if (!t || this.state !== 'connected') return Promise.reject(new Error('not connected'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, key });
      try {
        t.send(JSON.stringify({ id, ...command }));
      } catch (e) {
        this.pending.delete(id);
        reject(e);
      }
    });
  }

  subscribe(channel, opts = {}) {
    const sub = new Subscription(this, channel, opts);
    this.subs.set(channel, sub);
    if (this.state === 'connected') sub.send();
    return sub;
  }
}

class Subscription {
  constructor(hub, channel, opts) {
    this.hub = hub;
    this.channel = channel;
    this.opts = opts;
    this.offset = 0;
    this.epoch = '';
    this.subscribed = false;
  }

  async send() {
    const req = { channel: this.channel, recoverable: true, positioned: true, join_leave: true };
    if (this.epoch) Object.assign(req, { recover: true, offset: this.offset, epoch: this.epoch });
    try {
      const r = await this.hub.call({ subscribe: req }, 'subscribe');
      this.subscribed = true;
      const recovering = Boolean(req.recover);
      if (r.epoch !== undefined) {
        this.epoch = r.epoch;
        this.offset = r.offset || 0;
      }
      this.opts.onSubscribed?.({ recovering, recovered: Boolean(r.recovered), count: (r.publications || []).length });
      for (const p of r.publications || []) this.publication(p);
    } catch (e) {
      this.opts.onError?.(e);
    }
  }

  publication(pub) {
    if (pub.offset) this.offset = pub.offset;
    this.opts.onPublication?.(pub);
  }

  publish(data) {
    return this.hub.call({ publish: { channel: this.channel, data } }, 'publish');
  }

  async presence() {
    return (await this.hub.call({ presence: { channel: this.channel } }, 'presence')).presence || {};
  }

  async history(limit) {
    return this.hub.call({ history: { channel: this.channel, limit } }, 'history');
  }
}
