// Drives the real, unmodified @supabase/auth-js against the sidecar's admin port.
//
// usage: node generate_links.cjs '<json>'  with {url, key, verifyUrl, calls: [{name, op,
// params}]}. op "generateLink" (the default) is `new GoTrueAdminApi({url, headers})
// .generateLink(params)`, exactly as a backend would make it; op "verifyOtp" is
// `new GoTrueClient({url: verifyUrl}).verifyOtp(params)`, as supabase-js in an app would.
// The answers ({name, params, data, error}) go to stdout as one JSON array. Resolved
// through NODE_PATH (the cache directory scripts/test installs into).
'use strict';

const { GoTrueAdminApi, GoTrueClient, isAuthApiError } = require('@supabase/auth-js');

async function main() {
  const { url, key, verifyUrl, calls } = JSON.parse(process.argv[2]);
  const admin = new GoTrueAdminApi({ url, headers: { Authorization: `Bearer ${key}` } });
  const client = new GoTrueClient({
    url: verifyUrl,
    persistSession: false,
    autoRefreshToken: false,
    detectSessionInUrl: false,
  });
  const transcript = [];
  for (const { name, op, params } of calls) {
    const { data, error } =
      op === 'verifyOtp' ? await client.verifyOtp(params) : await admin.generateLink(params);
    transcript.push({
      name,
      op: op || 'generateLink',
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
