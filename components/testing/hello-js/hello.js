// A component in JavaScript, built by componentize-js: it answers every
// request routed to it with a greeting from its configuration (wasi:config),
// so that the host's WIT is checked from a second language.
import { get } from 'wasi:config/store@0.2.0-rc.1';

addEventListener('fetch', (event) =>
  event.respondWith(
    (async () => {
      const url = new URL(event.request.url);
      const greeting = get('greeting') ?? 'hello';
      return new Response(JSON.stringify({ greeting, from: 'JavaScript', path: url.pathname }), {
        headers: { 'content-type': 'application/json' },
      });
    })(),
  ),
);
