// What the Pusher tests share: the application's authorization endpoints (signed with
// the npm `pusher` SDK, as a backend signs them) and waits on pusher-js's events.

import http from 'node:http';

/**
 * The backend's `/auth` (channel authorization; presence members carry the `user`
 * query parameter as their id) and `/signin` (user authentication), signed by `sdk`.
 * Resolves to `{ url, close }`.
 */
export async function startAuthServer(sdk) {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      const p = new URLSearchParams(body);
      const user = url.searchParams.get('user');
      const channel = p.get('channel_name');
      const out = url.pathname === '/auth'
        ? sdk.authorizeChannel(p.get('socket_id'), channel,
          channel.startsWith('presence-') ? { user_id: user, user_info: { u: user } } : undefined)
        : sdk.authenticateUser(p.get('socket_id'), { id: user });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(out));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/** Resolves once the client is connected; rejects when it fails or is unavailable. */
export function connected(c) {
  return new Promise((resolve, reject) => {
    if (c.connection.state === 'connected') return resolve();
    c.connection.bind('connected', resolve);
    c.connection.bind('failed', () => reject(new Error('failed')));
    c.connection.bind('unavailable', () => reject(new Error('unavailable')));
  });
}

/** Resolves once the channel's subscription succeeded; rejects on its error. */
export function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.bind('pusher:subscription_succeeded', resolve);
    channel.bind('pusher:subscription_error', (e) => reject(Object.assign(new Error('subscription error'), e)));
  });
}

/** The data of the channel's next event of this name. */
export function next(channel, event) {
  return new Promise((resolve) => channel.bind(event, resolve));
}
