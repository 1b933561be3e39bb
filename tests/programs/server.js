// A Node server as the tests of `prefork run` start it: it serves on the socket prefork passes
// as descriptor 3 and drains on TERM, finishing the requests in flight.
"use strict";
const http = require("http");

let draining = false;

const server = http.createServer((req, res) => {
  if (draining) {
    // A keep-alive client is told to go elsewhere after this response.
    res.setHeader("Connection", "close");
  }
  const ms = Number(new URL(req.url, "http://x").searchParams.get("ms") || 0);
  setTimeout(() => {
    res.end(`node ${process.env.PREFORK_WORKER} ${process.pid}\n`);
  }, ms);
});
server.listen({ fd: 3 }, () => {
  console.error(`server.js: worker ${process.env.PREFORK_WORKER} listening on fd 3`);
});
process.on("SIGTERM", () => {
  // Stop accepting, close idle keep-alive connections, let requests in flight finish.
  draining = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
