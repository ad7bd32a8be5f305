// What a browser bundle gets for taskcast-client/server (the "browser"
// export condition): an error at load, so a publisher API key can never
// ship to the browser through a client component importing it. Listed in
// package.json's sideEffects, or a bundler would drop this module as unused.
throw new Error(
  'taskcast-client/server was bundled into browser code: import it only on the server ' +
    '(Server Actions, route handlers); it carries BROADCAST_API_KEY',
);
