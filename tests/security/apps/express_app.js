// A real Express upstream for the path tests: every route under /admin (an exact route, a
// wildcard route and a prefix mount, all case-insensitive as Express is by default) records
// the raw request target; everything else is a catch-all. GET /__hits (asked directly, not
// through the sidecar) answers the record. Prints its port once it listens.
"use strict";
const express = require("express");

const hits = { admin: [], other: [] };
const app = express();

app.get("/__hits", (req, res) => res.json(hits));

function admin(req, res) {
  hits.admin.push(req.originalUrl);
  res.send("admin area");
}
app.all(["/admin", "/admin/*rest"], admin);
app.use("/admin", admin);

app.use((req, res) => {
  hits.other.push(req.originalUrl);
  res.send("somewhere else");
});

const server = app.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${server.address().port}\n`);
});
