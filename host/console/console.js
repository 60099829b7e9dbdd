// The rentcar web console: a customer view (cars, my orders, my payments)
// and an operator view (components, subscriptions, dead letters, links,
// faults, traffic). It calls the same public and admin APIs as any other
// client, with the token the user signs in with, and refreshes what is on
// screen every two seconds. Everything it shows goes through textContent:
// nothing from the API is ever parsed as HTML.

const POLL_MS = 2000;
/** How far back the lag charts reach. */
const LAG_WINDOW_MS = 5 * 60 * 1000;
/** Request rates and p99 are over the metrics of this last stretch. */
const TRAFFIC_WINDOW_MS = 30 * 1000;
/** Lists are read a page at a time, up to this many pages. */
const MAX_PAGES = 10;

const state = {
  token: null,
  /** The views this token may open: "customer", "operator". */
  views: [],
  view: null,
  timer: null,
  /** Lag samples per subscription: "consumer topic" -> [[ms, lag], ...]. */
  lag: new Map(),
  /** /metrics snapshots of the last TRAFFIC_WINDOW_MS, oldest first. */
  snapshots: [],
  /** What each table last showed, so that an unchanged table is left alone. */
  shown: new Map(),
};

const $ = (id) => document.getElementById(id);

// ---- The API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the host; answers the JSON (or text) body, throws ApiError on 4xx/5xx. */
async function api(method, path, { json, body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (state.token) init.headers.Authorization = `Bearer ${state.token}`;
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'unreachable', `the host cannot be reached (${err.message})`);
  }
  const type = response.headers.get('content-type') || '';
  const data = type.startsWith('application/json') ? await response.json() : await response.text();
  if (!response.ok) {
    const message = (data && data.message) || String(data || response.statusText);
    throw new ApiError(response.status, data && data.error, message);
  }
  return data;
}

/** Every item of a paged list (`{items, next}`), a page of 1000 at a time. */
async function all(path) {
  const items = [];
  let after = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const query = after === null ? '?limit=1000' : `?limit=1000&after=${after}`;
    const answer = await api('GET', path + query);
    items.push(...answer.items);
    if (answer.next === null || answer.next === undefined) break;
    after = answer.next;
  }
  return items;
}

// ---- Building the page -----------------------------------------------------

/** An element with attributes (`class`, `data`: dataset) and children (text or nodes). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'data') Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A button that runs `action` (see ACTIONS) with its data when clicked. */
function actionButton(label, action, data, { disabled = false, secondary = false } = {}) {
  return el('button', { type: 'button', class: secondary ? 'secondary' : null, disabled, data: { action, ...data } }, label);
}

function number(value) {
  return el('td', { class: 'number' }, value);
}

function badge(text, tone) {
  return el('span', { class: `badge ${tone || ''}` }, text);
}

/** Fills a table's body, unless it already shows exactly this. */
function fill(id, key, rows, empty) {
  if (state.shown.get(id) === key) return;
  state.shown.set(id, key);
  const table = $(id);
  const columns = table.tHead.rows[0].cells.length;
  const body = table.tBodies[0];
  if (rows.length === 0) {
    body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: columns }, empty)));
  } else {
    body.replaceChildren(...rows);
  }
}

/** Shows why a table could not be read, in place of its rows. */
function unavailable(id, err) {
  fill(id, `error:${err.message}`, [], `Unavailable: ${err.message}`);
}

/** Keeps a select's options equal to `options` ([value, label]) and its choice where it was. */
function syncOptions(select, options) {
  const key = JSON.stringify(options);
  if (select.dataset.options === key) return;
  select.dataset.options = key;
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, label]) => el('option', { value }, label)));
  if (options.some(([value]) => String(value) === chosen)) select.value = chosen;
}

/** Says what an action did, or why it failed, at the top of the page. */
function notify(text, { error = false } = {}) {
  const line = $('feedback');
  line.textContent = text;
  line.classList.toggle('error', error);
  line.hidden = false;
}

function failed(what, err) {
  const status = err.status ? ` (HTTP ${err.status}${err.code ? `, ${err.code}` : ''})` : '';
  notify(`${what}: ${err.message}${status}`, { error: true });
}

function time(ms) {
  return new Date(ms).toLocaleString();
}

function shortDigest(digest) {
  return el('span', { class: 'digest', title: digest }, digest ? digest.slice(0, 12) : '-');
}

// ---- Signing in ------------------------------------------------------------

/** The claims of a JWT, read for display only (the host checks the token). */
function claimsOf(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '='));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

/**
 * Signs in with `token`: the host itself says what it may do. A token that
 * lists the caller's orders opens the customer view; one the admin API
 * takes (a JWT with the admin role, or the operator's static token) opens
 * the operator view. Only a refusal (401, 403, or 404 for an API that is
 * not there) closes a view: one whose component is stopped (503) opens,
 * and shows what fails in its panels.
 */
async function signIn(token) {
  state.token = token;
  const refused = (err) => err instanceof ApiError && [401, 403, 404].includes(err.status);
  const probe = (path) => api('GET', path).then(() => null, (err) => (refused(err) ? err : null));
  const [asCustomer, asOperator] = await Promise.all([probe('/orders?limit=1'), probe('/admin/components')]);
  state.views = [];
  if (!asCustomer) state.views.push('customer');
  if (!asOperator) state.views.push('operator');
  if (state.views.length === 0) {
    state.token = null;
    failed('Sign-in refused', asCustomer);
    return;
  }
  sessionStorage.setItem('rentcar-token', token);
  const claims = claimsOf(token);
  const roles = claims && Array.isArray(claims.roles) ? claims.roles.join(', ') : '';
  $('who').textContent = claims && claims.sub ? `${claims.sub}${roles ? ` (${roles})` : ''}` : 'operator (static token)';
  $('sign-in-view').hidden = true;
  $('session').hidden = false;
  $('tabs').hidden = false;
  $('tab-customer').hidden = !state.views.includes('customer');
  $('tab-operator').hidden = !state.views.includes('operator');
  $('feedback').hidden = true;
  show(state.views[0]);
}

function signOut(reason) {
  clearTimeout(state.timer);
  Object.assign(state, { token: null, views: [], view: null, timer: null, snapshots: [] });
  state.lag.clear();
  state.shown.clear();
  sessionStorage.removeItem('rentcar-token');
  for (const id of ['customer-view', 'operator-view', 'session', 'tabs']) $(id).hidden = true;
  $('sign-in-view').hidden = false;
  $('token').value = '';
  if (reason) notify(reason, { error: true });
  else $('feedback').hidden = true;
}

function show(view) {
  state.view = view;
  $('customer-view').hidden = view !== 'customer';
  $('operator-view').hidden = view !== 'operator';
  $('tab-customer').setAttribute('aria-pressed', view === 'customer');
  $('tab-operator').setAttribute('aria-pressed', view === 'operator');
  refreshNow();
}

// ---- Refreshing --------------------------------------------------------------

async function refreshNow() {
  clearTimeout(state.timer);
  if (!state.token) return;
  try {
    await (state.view === 'operator' ? refreshOperator() : refreshCustomer());
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut(`Signed out: the host refused the token (${err.message})`);
      return;
    }
    console.error(err);
  }
  if (state.token) state.timer = setTimeout(refreshNow, POLL_MS);
}

/** Runs `read`, then `render` with its answer; a read refused for the token ends the session. */
async function load(id, read, render) {
  try {
    render(await read());
  } catch (err) {
    if (err.status === 401) throw err;
    unavailable(id, err);
  }
}

// ---- The customer view -------------------------------------------------------

function refreshCustomer() {
  return Promise.all([
    load('availability', () => all('/availability'), renderAvailability),
    load('orders', () => all('/orders'), renderOrders),
    load('payments', () => all('/payments'), renderPayments),
  ]);
}

function renderAvailability(cars) {
  syncOptions($('order-car'), cars.map((car) => [car.carId, `${car.name} (#${car.carId}, ${car.available} free)`]));
  const rows = cars.map((car) =>
    el('tr', { data: { id: car.carId } },
      el('td', {}, car.carId), el('td', {}, car.name),
      number(car.available), number(car.stock)));
  fill('availability', JSON.stringify(cars), rows, 'No cars yet.');
}

const ORDER_TONES = { PAID: 'warn', RESERVED: 'good', REJECTED: 'bad', CANCELLED: '' };

function renderOrders(orders) {
  const rows = orders.slice().reverse().map((order) =>
    el('tr', { data: { id: order.id, status: order.status } },
      el('td', {}, order.id), el('td', {}, order.carId), number(order.qty),
      el('td', {}, badge(order.status, ORDER_TONES[order.status])),
      el('td', {}, order.status === 'CANCELLED' || order.status === 'REJECTED'
        ? null
        : actionButton('Cancel', 'cancel-order', { id: order.id }, { secondary: true }))));
  fill('orders', JSON.stringify(orders), rows, 'No orders yet.');
}

const PAYMENT_TONES = { AUTHORIZED: '', APPROVED: 'good', CANCELLED: '', REFUNDED: 'warn' };

function renderPayments(payments) {
  const rows = payments.slice().reverse().map((payment) =>
    el('tr', { data: { id: payment.id, status: payment.status } },
      el('td', {}, payment.id), el('td', {}, payment.orderId), el('td', {}, payment.carId),
      number(payment.qty), el('td', {}, badge(payment.status, PAYMENT_TONES[payment.status]))));
  fill('payments', JSON.stringify(payments), rows, 'No payments yet.');
}

/** A fresh Idempotency-Key, so that a retried click cannot order twice. */
function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function placeOrder(event) {
  event.preventDefault();
  const carId = Number($('order-car').value);
  const qty = Number($('order-qty').value);
  try {
    const order = await api('POST', '/orders', { json: { carId, qty }, headers: { 'Idempotency-Key': idempotencyKey() } });
    notify(`Order ${order.id} placed and paid: ${qty} of car #${carId}, status ${order.status}.`);
  } catch (err) {
    failed('The order was not placed', err);
  }
  refreshNow();
}

// ---- The operator view -------------------------------------------------------

async function refreshOperator() {
  const metrics = await api('GET', '/metrics').then(parseMetrics, () => null);
  if (metrics) {
    state.snapshots.push(metrics);
    while (metrics.at - state.snapshots[0].at > TRAFFIC_WINDOW_MS) state.snapshots.shift();
  }
  const traffic = trafficOver(state.snapshots);
  await Promise.all([
    load('components', () => api('GET', '/admin/components'), (components) => renderComponents(components, traffic)),
    load('subscriptions', () => api('GET', '/admin/subscriptions'), renderSubscriptions),
    load('dead-letters', () => api('GET', '/admin/dead-letters'), renderDeadLetters),
    load('links', () => api('GET', '/admin/links'), renderLinks),
    load('faults', () => api('GET', '/admin/faults'), renderFaults),
  ]);
}

function renderComponents(components, traffic) {
  const names = components.map((c) => [c.name, c.name]);
  syncOptions($('deploy-component'), names);
  syncOptions($('fault-component'), names);
  const rows = components.map((c) => {
    const seen = traffic.get(c.name);
    const running = c.state === 'running';
    return el('tr', { data: { name: c.name, state: c.state, version: c.version } },
      el('td', {}, c.name),
      el('td', {}, badge(c.state, running ? 'good' : 'bad')),
      el('td', {}, shortDigest(c.version)),
      el('td', {}, time(c.loadedAt)),
      number(c.inFlight),
      number(seen ? seen.rate.toFixed(1) : '-'),
      number(seen && seen.p99 !== null ? formatSeconds(seen.p99) : '-'),
      el('td', {},
        running
          ? actionButton('Stop', 'stop', { name: c.name }, { secondary: true })
          : actionButton('Start', 'start', { name: c.name }),
        actionButton('Roll back', 'rollback', { name: c.name },
          { secondary: true, disabled: !c.previousVersion })));
  });
  fill('components', JSON.stringify([components, [...traffic]]), rows, 'No components.');
}

function renderSubscriptions(subscriptions) {
  const now = Date.now();
  const rows = subscriptions.map((sub) => {
    const key = `${sub.consumer} ${sub.topic}`;
    const samples = state.lag.get(key) || [];
    samples.push([now, sub.lag]);
    while (now - samples[0][0] > LAG_WINDOW_MS) samples.shift();
    state.lag.set(key, samples);
    return el('tr', { data: { consumer: sub.consumer, topic: sub.topic, lag: sub.lag } },
      el('td', {}, sub.consumer), el('td', {}, sub.topic),
      el('td', {}, badge(sub.state, sub.state === 'running' ? 'good' : 'bad')),
      number(sub.position), number(sub.head),
      number(sub.lag), el('td', {}, lagChart(samples, now)),
      number(sub.deadLettered));
  });
  // The charts move with time: always redrawn.
  fill('subscriptions', String(now), rows, 'No subscriptions.');
}

/** A small line chart of lag over the last LAG_WINDOW_MS, as SVG. */
function lagChart(samples, now) {
  const width = 160;
  const height = 28;
  const peak = Math.max(1, ...samples.map(([, lag]) => lag));
  // The chart spans the samples it has (at least 20 s), up to the window.
  const span = Math.min(LAG_WINDOW_MS, Math.max(20 * 1000, now - samples[0][0]));
  const x = (at) => width - ((now - at) / span) * width;
  const y = (lag) => height - 2 - (lag / peak) * (height - 4);
  const said = `lag over the last ${Math.round(span / 1000)} s, peak ${peak}`;
  const svg = svgElement('svg', { class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': said });
  svg.append(
    svgElement('title', {}, said),
    svgElement('line', { x1: 0, x2: width, y1: height - 1, y2: height - 1 }),
    svgElement('polyline', { points: samples.map(([at, lag]) => `${x(at).toFixed(1)},${y(lag).toFixed(1)}`).join(' ') }),
  );
  return svg;
}

function svgElement(tag, attributes, text) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderDeadLetters(letters) {
  const rows = letters.map((letter) =>
    el('tr', { data: { id: letter.id } },
      el('td', {}, letter.id), el('td', {}, letter.consumer),
      el('td', {}, `${letter.event.type} (${letter.topic}, key ${letter.event.key})`),
      number(letter.attempts), el('td', { class: 'error' }, letter.lastError),
      el('td', {}, actionButton('Replay', 'replay', { id: letter.id }))));
  fill('dead-letters', JSON.stringify(letters), rows, 'No dead letters.');
}

const CIRCUIT_TONES = { closed: 'good', 'half-open': 'warn', open: 'bad' };

function renderLinks(links) {
  const rows = links.map((link) =>
    el('tr', { data: { from: link.from, to: link.to, circuit: link.circuit } },
      el('td', {}, link.from), el('td', {}, link.to), el('td', {}, link.interface),
      number(`${link.timeoutMs} ms`), number(`${link.maxConcurrent} (+${link.maxQueue} queued)`),
      el('td', {}, badge(link.circuit, CIRCUIT_TONES[link.circuit]))));
  fill('links', JSON.stringify(links), rows, 'No links.');
}

function renderFaults(faults) {
  const rows = Object.entries(faults).map(([name, fault]) =>
    el('tr', { data: { name } },
      el('td', {}, name), number(`${fault.delayMs} ms`), number(`${fault.jitterMs} ms`),
      number(`${fault.abortPercent} %`), number(`${fault.replyDelayMs} ms`),
      el('td', {}, actionButton('Remove', 'remove-fault', { name }, { secondary: true }))));
  fill('faults', JSON.stringify(faults), rows, 'No faults injected.');
}

async function deploy(event) {
  event.preventDefault();
  const name = $('deploy-component').value;
  const file = $('deploy-file').files[0];
  if (!file) return notify('Choose a .wasm file to deploy.', { error: true });
  notify(`Deploying ${file.name} (${(file.size / 1048576).toFixed(1)} MiB) to ${name}: checking it first...`);
  try {
    const component = await api('PUT', `/admin/components/${encodeURIComponent(name)}`, {
      body: file,
      headers: { 'Content-Type': 'application/wasm' },
    });
    notify(`${name} now runs version ${component.version.slice(0, 12)} (the previous one is kept for roll-back).`);
    $('deploy-file').value = '';
  } catch (err) {
    failed(err.status === 422 ? `${name}: the new version was refused, the old one serves on` : `Deploying to ${name} failed`, err);
  }
  refreshNow();
}

async function addFault(event) {
  event.preventDefault();
  const name = $('fault-component').value;
  const fault = {
    delayMs: Number($('fault-delay').value),
    jitterMs: Number($('fault-jitter').value),
    abortPercent: Number($('fault-abort').value),
    replyDelayMs: Number($('fault-reply').value),
  };
  try {
    await api('PUT', `/admin/faults/${encodeURIComponent(name)}`, { json: fault });
    notify(`Fault injected into ${name}: ${fault.delayMs} ms delay, ${fault.jitterMs} ms jitter, ${fault.abortPercent} % aborted, ${fault.replyDelayMs} ms reply delay.`);
  } catch (err) {
    failed(`The fault was not injected into ${name}`, err);
  }
  refreshNow();
}

// ---- Traffic from /metrics ----------------------------------------------------

/** The request counts and latency buckets per component in Prometheus text. */
function parseMetrics(text) {
  const requests = new Map();
  const buckets = new Map();
  for (const line of text.split('\n')) {
    const match = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!match) continue;
    const [, name, rawLabels, rawValue] = match;
    if (name !== 'rentcar_requests_total' && name !== 'rentcar_request_duration_seconds_bucket') continue;
    const labels = Object.fromEntries(Array.from(rawLabels.matchAll(/(\w+)="([^"]*)"/g), (m) => [m[1], m[2]]));
    const value = Number(rawValue);
    if (name === 'rentcar_requests_total') {
      requests.set(labels.component, (requests.get(labels.component) || 0) + value);
    } else {
      if (!buckets.has(labels.component)) buckets.set(labels.component, new Map());
      buckets.get(labels.component).set(labels.le === '+Inf' ? Infinity : Number(labels.le), value);
    }
  }
  return { at: Date.now(), requests, buckets };
}

/** Per component: requests per second and p99 (seconds) between the oldest and newest snapshot. */
function trafficOver(snapshots) {
  const traffic = new Map();
  if (snapshots.length < 2) return traffic;
  const first = snapshots[0];
  const last = snapshots[snapshots.length - 1];
  const seconds = (last.at - first.at) / 1000;
  for (const [component, total] of last.requests) {
    const count = total - (first.requests.get(component) || 0);
    const before = first.buckets.get(component) || new Map();
    const deltas = Array.from(last.buckets.get(component) || new Map(), ([le, n]) => [le, n - (before.get(le) || 0)]);
    traffic.set(component, { rate: count / seconds, p99: quantile(0.99, deltas) });
  }
  return traffic;
}

/** A quantile from cumulative histogram buckets ([upper bound, count]), as Prometheus's histogram_quantile. */
function quantile(q, buckets) {
  buckets.sort(([a], [b]) => a - b);
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [upper, count] of buckets) {
    if (count >= rank) {
      if (upper === Infinity) return lower;
      return lower + (upper - lower) * ((rank - below) / Math.max(count - below, 1));
    }
    lower = upper;
    below = count;
  }
  return lower;
}

function formatSeconds(seconds) {
  return seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

// ---- Actions -------------------------------------------------------------------

/** What the table buttons do, by their data-action. */
const ACTIONS = {
  'cancel-order': async ({ id }) => {
    const order = await api('POST', `/orders/${id}/cancel`);
    return `Order ${id} cancelled (status ${order.status}); its payment is cancelled.`;
  },
  stop: async ({ name }) => {
    await api('POST', `/admin/components/${encodeURIComponent(name)}/stop`);
    return `${name} stopped: its requests answer 503 and its events wait in the log.`;
  },
  start: async ({ name }) => {
    await api('POST', `/admin/components/${encodeURIComponent(name)}/start`);
    return `${name} started: it catches up on the events it missed.`;
  },
  rollback: async ({ name }) => {
    const component = await api('POST', `/admin/components/${encodeURIComponent(name)}/rollback`);
    return `${name} rolled back to version ${component.version.slice(0, 12)}.`;
  },
  replay: async ({ id }) => {
    await api('POST', `/admin/dead-letters/${id}/replay`);
    return `Dead letter ${id} delivered and removed.`;
  },
  'remove-fault': async ({ name }) => {
    await api('DELETE', `/admin/faults/${encodeURIComponent(name)}`);
    return `Fault on ${name} removed.`;
  },
};

async function onTableClick(event) {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const { action, ...data } = button.dataset;
  // Disabled while it runs, against a double click; a table that does not
  // change keeps this very button, so it is enabled again after.
  button.disabled = true;
  try {
    notify(await ACTIONS[action](data));
  } catch (err) {
    failed(`${button.textContent} failed`, err);
  } finally {
    button.disabled = false;
  }
  refreshNow();
}

// ---- Start -------------------------------------------------------------------

function start() {
  $('sign-in-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (token) signIn(token);
    else notify('Paste a token to sign in.', { error: true });
  });
  $('sign-out').addEventListener('click', () => signOut());
  for (const tab of $('tabs').querySelectorAll('button')) {
    tab.addEventListener('click', () => show(tab.dataset.view));
  }
  $('order-form').addEventListener('submit', placeOrder);
  $('deploy-form').addEventListener('submit', deploy);
  $('fault-form').addEventListener('submit', addFault);
  for (const table of document.querySelectorAll('table')) table.addEventListener('click', onTableClick);
  const saved = sessionStorage.getItem('rentcar-token');
  if (saved) signIn(saved);
}

start();
