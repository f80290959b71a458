// Drives the real, unmodified @supabase/auth-js against the sidecar's admin port.
//
// usage: node generate_links.cjs '<json>'  with {url, key, calls: [{name, params}]}
// Each call is `new GoTrueAdminApi({url, headers}).generateLink(params)`, exactly as a
// backend would make it; the answers ({name, params, data, error}) go to stdout as one
// JSON array. Resolved through NODE_PATH (the cache directory scripts/test installs into).
'use strict';

const { GoTrueAdminApi, isAuthApiError } = require('@supabase/auth-js');

async function main() {
  const { url, key, calls } = JSON.parse(process.argv[2]);
  const admin = new GoTrueAdminApi({ url, headers: { Authorization: `Bearer ${key}` } });
  const transcript = [];
  for (const { name, params } of calls) {
    const { data, error } = await admin.generateLink(params);
    transcript.push({
      name,
      params,
      data,
      error: error && {
        name: error.name,
        message: error.message,
        status: error.status,
        code: error.code,
        reasons: error.reasons,
        isAuthApiError: isAuthApiError(error),
      },
    });
  }
  process.stdout.write(JSON.stringify(transcript, null, 2) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
