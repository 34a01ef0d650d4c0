// The demo's client: Centrifugo's client protocol (v2, JSON) over a WebSocket, with
// reconnects and recovery. Small on purpose; for applications, centrifuge-js speaks
// the same protocol with every feature.
//
//   const hub = new HubClient(url, { getToken: async () => token });
//   hub.on('state', (state) => ...);             // 'connecting' | 'connected' | 'disconnected'
//   const sub = hub.subscribe('chat:lobby', { onPublication, onJoin, onLeave, onSubscribed });
//   await hub.connect();
//   await sub.publish({ text: 'hi' }); await sub.presence(); await sub.history(20);

export class HubClient {
  constructor(url, { getToken = null, minDelay = 200, maxDelay = 5000 } = {}) {
    this.url = url;
    this.getToken = getToken;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.state = 'disconnected';
    this.ws = null;
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
    if (this.ws) this.ws.close(1000);
    this.setState('disconnected');
  }

  open() {
    this.setState('connecting');
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = async () => {
      try {
        const token = this.getToken ? await this.getToken() : '';
        const result = await this.call({ connect: { token, name: 'volley-demo' } }, 'connect');
        this.clientId = result.client;
        this.attempt = 0;
        this.pongs = result.pong;
        this.setState('connected', result);
        for (const sub of this.subs.values()) sub.send();
      } catch (e) {
        ws.close(3000);
      }
    };
    ws.onmessage = (e) => {
      for (const line of String(e.data).split('\n')) {
        if (line) this.handle(JSON.parse(line));
      }
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const { reject } of this.pending.values()) reject(new Error('disconnected'));
      this.pending.clear();
      for (const sub of this.subs.values()) sub.subscribed = false;
      // The protocol's rule: 3500-3999 and 4500-4999 mean "do not reconnect".
      const terminal = (e.code >= 3500 && e.code < 4000) || (e.code >= 4500 && e.code < 5000);
      if (this.closed || terminal) {
        this.setState('disconnected', { code: e.code, reason: e.reason });
        return;
      }
      this.setState('connecting', { code: e.code, reason: e.reason });
      const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt++) * (0.5 + Math.random() / 2);
      this.retry = setTimeout(() => this.open(), delay);
    };
  }

  handle(msg) {
    if (!msg.id && !msg.push && !msg.error) {
      // The server's ping: answer with a pong.
      if (this.pongs && this.ws) this.ws.send('{}');
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
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error('not connected'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, key });
      ws.send(JSON.stringify({ id, ...command }));
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
