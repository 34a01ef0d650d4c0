// The Socket.IO 4 server that bench/peers.py measures Volley against, as a user would
// write it: default options, a `subscribe` event that joins a room (acknowledged), and
// an HTTP endpoint a backend publishes through, `POST /publish` with
// {"room": ROOM or [ROOMS], "event": NAME, "data": ANY}, which emits to the room(s).
//
//   node socketio-server.mjs [PORT]     (default 0: a free port)
//
// Prints "listening on HOST:PORT" once ready; stops on SIGTERM or SIGINT.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const host = process.env.HOST ?? "127.0.0.1";
// The largest /publish body read (bytes).
const MAX_BODY = 1 << 20;

const http = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    // Socket.IO handles its own path before this listener; anything else is unknown.
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      res.writeHead(413).end();
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on("end", () => {
    if (size > MAX_BODY) return;
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      res.writeHead(400, { "content-type": "text/plain" }).end("invalid JSON");
      return;
    }
    const rooms = Array.isArray(msg.room) ? msg.room : [msg.room];
    if (!rooms.length || rooms.some((r) => typeof r !== "string") || typeof msg.event !== "string") {
      res.writeHead(400, { "content-type": "text/plain" }).end("room (a string or strings) and event needed");
      return;
    }
    io.to(rooms).emit(msg.event, msg.data);
    res.writeHead(204).end();
  });
});

const io = new Server(http);
io.on("connection", (socket) => {
  socket.on("subscribe", (room, ack) => {
    if (typeof room !== "string") {
      if (typeof ack === "function") ack({ error: "a room name is a string" });
      return;
    }
    socket.join(room);
    if (typeof ack === "function") ack("ok");
  });
});

http.listen(port, host, () => {
  const a = http.address();
  console.log(`listening on ${a.address}:${a.port}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    http.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
