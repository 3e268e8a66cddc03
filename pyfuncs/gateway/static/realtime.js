// pyfuncs realtime: the browser client of `pyfuncs serve` (an ES module, no dependencies).
//
//   import { Realtime } from "https://gateway.example/realtime.js";
//   const rt = new Realtime({ token: () => fetchMyJwt() });
//   const sub = rt.subscribe("academy.tripwire_users", {
//     filters: [{ column: "granted_by", op: "eq", value: me }],
//     onRows: (rows) => render([...rows.values()]),        // the cache, after each change
//     onChange: (event) => console.log(event.op, event.key),
//   });
//
// * Each subscription keeps a local cache of its rows (`sub.rows`, a Map by primary key):
//   the snapshot fills it, changes are applied in the order the gateway sends them, each
//   exactly once.
// * The connection reconnects by itself and resumes every subscription from its last
//   position (heartbeats advance positions even when nothing visible changed), naming the
//   keys of the rows it holds: the gateway answers which of them went while it was away
//   (deleted, or no longer visible), and those leave the cache. Positions are opaque
//   tokens: they say nothing of the changes a subscriber was not shown.
// * Numbers a JavaScript number cannot hold exactly (an integer beyond ±(2^53 - 1), a
//   `bigint` snowflake; a `numeric` with more digits than a double holds) arrive as strings
//   of their digits, in rows and keys alike, and keys stay exact: the cache tells them apart
//   and the resume names them with their digits. This needs JSON.parse's source text access
//   (Chromium 114, Firefox 135, Safari 18.4); elsewhere such numbers are rounded, as
//   JSON.parse does (and a warning is logged once).
// * Cross-tab: the tabs of one origin share one WebSocket. They elect a leader with the Web
//   Locks API; the leader holds the connection, subscribes for every tab and relays the
//   gateway's messages over a BroadcastChannel. When the leader's tab closes its lock is
//   released, another tab becomes leader and resubscribes each subscription from the last
//   position its tab applied, so nothing is lost or repeated.
//
// The protocol is documented in the pyfuncs README ("Realtime: the gateway").

const RESYNC_REQUIRED = 4010; // the close code after which positions are worthless
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;
const SWEEP_MS = 5_000; // how often the leader forgets the subscriptions of closed tabs
// refusals that pass: the subscription is asked for again a second later
const RETRIED = new Set(["rate_limited", "unavailable"]);

// The positions of the changes a subscription applied last, so that one arriving again
// (relayed by a tab that was leader, after a new leader resumed from an earlier position)
// is applied once. Positions are opaque: they can be told apart, not ordered.
const REMEMBERED = 1000;

// Whether JSON.parse gives revivers the source text of a value (`context.source`).
const SOURCE_ACCESS = (() => {
  let given = false;
  JSON.parse("[1]", function (key, value, context) {
    if (key === "0") given = context?.source === "1";
    return value;
  });
  return given;
})();

// The numbers received as strings because a number cannot hold them: for each object (a
// row, a key) that holds some, member -> the number's JSON text. Each tab parses what it
// receives itself (the leader relays the text), so each has these for its own objects.
const NUMBERS = new WeakMap();
let warned = false;

/** A gateway message, numbers exact (see the top of this module). */
function parse(text) {
  return JSON.parse(text, SOURCE_ACCESS ? revive : reviveRounded);
}

function revive(key, value, context) {
  if (typeof value !== "number" || exactNumber(value, context.source)) return value;
  let members = NUMBERS.get(this);
  if (!members) NUMBERS.set(this, (members = new Map()));
  members.set(key, context.source);
  return context.source;
}

function reviveRounded(key, value) {
  if (!warned && typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)) {
    warned = true;
    console.warn("pyfuncs realtime: this browser's JSON.parse gives no source text, so integers " +
      "beyond 2^53 (and numerics with more digits than a double holds) are rounded, and rows " +
      "whose keys differ only there are taken for one");
  }
  return value;
}

/** Whether `value`, parsed from JSON `source`, is exactly the number written: an integer
 * (no fraction, no exponent) within ±(2^53 - 1), or another number whose shortest form has
 * the value of its source (0.1 does, 0.10000000000000000001 does not). */
function exactNumber(value, source) {
  if (!/[.eE]/.test(source)) return Number.isSafeInteger(value);
  if (!Number.isFinite(value)) return false;
  const shortest = String(value);
  return shortest === source || decimal(shortest) === decimal(source);
}

/** The value of a JSON number as [sign, digits without leading or trailing zeros (none for
 * zero), exponent of the last digit]: two texts have equal values when these are equal. */
function decimalParts(text) {
  const [, sign, whole, fraction = "", exponent = "0"] =
    /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text);
  let digits = (whole + fraction).replace(/^0+/, "");
  const trimmed = digits.replace(/0+$/, "");
  const exp = Number(exponent) - fraction.length + (digits.length - trimmed.length);
  digits = trimmed;
  return digits ? [sign, digits, exp] : ["", "", 0];
}

function decimal(text) {
  const [sign, digits, exp] = decimalParts(text);
  return `${sign}${digits || "0"}e${exp}`;
}

/** A JSON number's value written as JavaScript writes numbers (String(n)), with all its
 * digits: a number received as a string is written as a number it equals would be. */
function numberJSON(text) {
  const [sign, digits, exp] = decimalParts(text);
  if (!digits) return "0";
  const k = digits.length;
  const n = k + exp; // where the decimal point goes
  if (k <= n && n <= 21) return sign + digits + "0".repeat(n - k);
  if (0 < n && n <= 21) return `${sign}${digits.slice(0, n)}.${digits.slice(n)}`;
  if (-6 < n && n <= 0) return `${sign}0.${"0".repeat(-n)}${digits}`;
  const mantissa = k === 1 ? digits : `${digits[0]}.${digits.slice(1)}`;
  return `${sign}${mantissa}e${n - 1 < 0 ? "-" : "+"}${Math.abs(n - 1)}`;
}

/** The exact JSON of `holder[member]` (null if missing): numbers received as strings are
 * written as the numbers they are, objects with their members sorted (jsonb's order and
 * the gateway's differ), so equal values have one text. */
function exactJSON(holder, member) {
  const source = NUMBERS.get(holder)?.get(member);
  if (source !== undefined) return numberJSON(source);
  const value = holder[member] ?? null;
  if (typeof value !== "object" || value === null) return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((_, i) => exactJSON(value, String(i))).join(",")}]`;
  const members = Object.keys(value).sort();
  return `{${members.map((m) => `${JSON.stringify(m)}:${exactJSON(value, m)}`).join(",")}}`;
}

/** A key as the cache's Map has it: the JSON of its values, exact (`sub.keyOf`). */
function keyOf(columns, values) {
  return `[${columns.map((c) => exactJSON(values, c)).join(",")}]`;
}

/** A row's (or an event key's) key as the gateway writes keys, {column: value} for the key's
 * columns, as exact JSON: what a resume names (numbers with all their digits). */
function keyJSON(columns, values) {
  return `{${columns.map((c) => `${JSON.stringify(c)}:${exactJSON(values, c)}`).join(",")}}`;
}

function defaultUrl() {
  const url = new URL("/realtime", import.meta.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** The leader's copy of the keys a subscription holds (as keyJSON), after a gateway
 * message for it. */
function trackKeys(want, message) {
  const { keys } = want;
  if (message.type === "subscribed") {
    want.keyColumns = message.key;
    if (!message.resumed) {
      keys.clear();
      for (const row of message.rows) keys.add(keyJSON(message.key, row));
    }
    for (const key of message.gone || []) keys.delete(keyJSON(message.key, key));
  } else if (message.op === "TRUNCATE") {
    keys.clear();
  } else if (message.key && want.keyColumns) {
    const key = keyJSON(want.keyColumns, message.key);
    if (message.row == null) keys.delete(key);
    else keys.add(key);
  }
}

/** One subscription of this tab: its callbacks, its cache and its position. */
export class Subscription {
  constructor(realtime, id, table, options) {
    this.realtime = realtime;
    this.id = id;
    this.table = table;
    this.filters = options.filters || [];
    this.options = options;
    this.rows = new Map(); // sub.keyOf(row), the exact JSON of the key values -> row
    this.keyColumns = null;
    this.position = null; // the last position applied: where to resume
    this.applied = new Set(); // the positions of the changes applied last (REMEMBERED)
    this.ready = false; // the snapshot (or the resume) has been confirmed
    this.closed = false;
  }

  /** What the leader needs to (re)subscribe it: where to resume, and the keys of the rows
   * it holds (exact JSON texts), so that the gateway can say which of them went while it
   * was away. */
  spec() {
    const columns = this.keyColumns;
    const keys =
      this.position && columns ? [...this.rows.values()].map((row) => keyJSON(columns, row)) : null;
    return { id: this.id, table: this.table, filters: this.filters, since: this.position, keys };
  }

  /** The key of a row (or of an event's `key`) in `rows`: the JSON of its key's values,
   * numbers exact: JSON.stringify([row.id]) for a key of text or of numbers a JavaScript
   * number holds, but not for a number received as a string (its digits, unquoted). */
  keyOf(values) {
    return keyOf(this.keyColumns, values);
  }

  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.realtime._forget(this);
  }

  /** Apply one gateway message addressed to this subscription (in the order received). */
  _apply(message) {
    if (this.closed) return;
    const { type } = message;
    if (type === "subscribed") {
      this.keyColumns = message.key;
      if (!message.resumed) {
        this.rows.clear(); // the same Map throughout, so holding on to sub.rows is safe
        for (const row of message.rows) this.rows.set(this.keyOf(row), row);
        this.position = message.position;
        this.applied.clear();
        this._call("onSnapshot", this.rows, this);
        this._call("onRows", this.rows, this);
      } else if (message.gone?.length) {
        // rows deleted, or no longer visible to us, while we were away
        for (const key of message.gone) this.rows.delete(this.keyOf(key));
        this._call("onRows", this.rows, this);
      }
      this.ready = true;
    } else if (type === "change") {
      // after a takeover the same change can arrive again: apply it once
      if (this.applied.has(message.position)) return;
      this.applied.add(message.position);
      if (this.applied.size > REMEMBERED) this.applied.delete(this.applied.values().next().value);
      this.position = message.position;
      if (message.op === "TRUNCATE") this.rows.clear();
      else if (message.row == null) this.rows.delete(this.keyOf(message.key));
      else this.rows.set(this.keyOf(message.key), message.row);
      this._call("onChange", message, this);
      this._call("onRows", this.rows, this);
    } else if (type === "heartbeat") {
      this.position = message.positions[this.id] ?? this.position;
    } else if (type === "error") {
      if (message.code === "resync_required") {
        this.position = null; // the leader subscribes afresh: a snapshot replaces the cache
      } else if (!RETRIED.has(message.code)) {
        this.closed = true; // the gateway refused it (a bad filter, forbidden...)
        this.realtime._forget(this);
      }
      this._call("onError", message, this);
    }
  }

  _call(name, ...args) {
    const callback = this.options[name];
    if (!callback) return;
    try {
      callback(...args);
    } catch (error) {
      console.error(`pyfuncs realtime: ${name} of ${this.id} threw`, error);
    }
  }
}

/**
 * The realtime client of one tab.
 *
 * options: token (a JWT, or a function returning one or a promise of one; called again to
 * reconnect and before expiry), url (default: /realtime of the gateway serving this
 * module), crossTab (default true: share one connection between the tabs of this origin),
 * channel (the name tabs share; tabs of different users must use different names),
 * refreshBefore (default 30: seconds before the token's expiry to ask for a new one),
 * onStatus(status) with status.role "leader" | "follower" and status.state "connecting" |
 * "open" | "closed".
 */
export class Realtime {
  constructor(options = {}) {
    this.url = options.url || defaultUrl();
    this.token = options.token;
    this.refreshBefore = options.refreshBefore ?? 30;
    this.onStatus = options.onStatus || (() => {});
    this.tab = crypto.randomUUID().slice(0, 8);
    this.subscriptions = new Map(); // id -> Subscription, this tab's
    this.role = "follower";
    this.state = "closed";
    this.closed = false;
    this._count = 0;
    // (versioned: tabs still running an older client, which relayed parsed messages and
    // named keys as objects, keep to themselves)
    const name = `${options.channel || `pyfuncs-realtime ${this.url}`} v2`;
    const shared = options.crossTab !== false && "locks" in navigator && "BroadcastChannel" in self;
    this._leader = null; // set while this tab leads: the connection and every tab's wants
    if (shared) {
      this._channel = new BroadcastChannel(name);
      this._channel.onmessage = (event) => this._onPeer(event.data);
      this._lockName = name;
      // a lock per tab, held until the tab goes: the leader's way to tell which tabs live
      navigator.locks.request(`${name} tab ${this.tab}`, () => new Promise(() => {}));
      navigator.locks.request(name, () => new Promise((release) => this._lead(release)));
      this._tell({ kind: "hello", tab: this.tab });
      addEventListener("pagehide", () => this.close());
    } else {
      this._channel = null;
      this._lead(() => {});
    }
  }

  /** Subscribe to `table` ("schema.name"); options: filters, onSnapshot(rows, sub),
   * onChange(event, sub), onRows(rows, sub), onError(error, sub). */
  subscribe(table, options = {}) {
    if (this.closed) throw new Error("this Realtime client is closed");
    const id = `${this.tab}-${++this._count}`;
    const sub = new Subscription(this, id, table, options);
    this.subscriptions.set(id, sub);
    this._wantsChanged();
    return sub;
  }

  /** Stop: unsubscribe everything and, if leading, hand the connection to another tab. */
  close() {
    if (this.closed) return;
    this.closed = true;
    for (const sub of this.subscriptions.values()) sub.closed = true;
    this.subscriptions.clear();
    this._wantsChanged();
    if (this._leader) {
      this._leader.stop();
      this._leader.release();
      this._leader = null;
    }
    if (this._channel) {
      this._tell({ kind: "bye", tab: this.tab });
      this._channel.close();
    }
  }

  _forget(sub) {
    this.subscriptions.delete(sub.id);
    this._wantsChanged();
  }

  _wantsChanged() {
    const specs = [...this.subscriptions.values()].map((s) => s.spec());
    if (this._leader) this._leader.want(this.tab, specs);
    else if (this._channel && !this.closed) this._tell({ kind: "want", tab: this.tab, specs });
  }

  _status(state) {
    this.state = state;
    this.onStatus({ role: this.role, state });
  }

  _tell(message) {
    this._channel.postMessage(message);
  }

  /** A message from another tab. There is one leader at a time (the lock says so). */
  _onPeer(message) {
    switch (message.kind) {
      case "gateway": // the leader relays what the gateway sent (as text: see parse)
        return this._deliver(parse(message.text));
      case "status":
        return this._status(message.state);
      case "leader": // a new leader, or the answer to our hello: tell it what we need
        this._status(message.state);
        return this._wantsChanged();
      case "hello":
        if (this._leader) this._tell({ kind: "leader", tab: this.tab, state: this.state });
        return;
      case "want":
        return this._leader?.want(message.tab, message.specs);
      case "bye":
        return this._leader?.want(message.tab, []);
    }
  }

  /** A gateway message, from our connection or relayed by the leader: ours if it names one
   * of our subscriptions (a heartbeat names several). */
  _deliver(message) {
    if (message.type === "heartbeat") {
      for (const id of Object.keys(message.positions)) this.subscriptions.get(id)?._apply(message);
    } else if (message.sub) {
      this.subscriptions.get(message.sub)?._apply(message);
    }
  }

  _lead(release) {
    if (this.closed) return release();
    this.role = "leader";
    this._leader = new Leader(this, release);
    this._wantsChanged();
    this._leader.connect();
    if (this._channel) this._tell({ kind: "leader", tab: this.tab, state: this.state });
  }
}

/** The tab that holds the connection: every tab's subscriptions, reconnect and resume. */
class Leader {
  constructor(realtime, release) {
    this.realtime = realtime;
    this.release = release;
    this.wants = new Map(); // subscription id -> { tab, spec, position, sent }
    this.ws = null;
    this.open = false; // authenticated
    this.stopped = false;
    this.retries = 0;
    this.expires = null; // of the token in use
    this.limits = null; // the gateway's, from `ready`: message bytes, keys to resume with
    this.timers = new Set();
    if (realtime._channel) this.every(SWEEP_MS, () => this.sweep());
  }

  every(ms, fn) {
    const timer = setInterval(fn, ms);
    this.timers.add(() => clearInterval(timer));
  }

  after(ms, fn) {
    const timer = setTimeout(fn, ms);
    this.timers.add(() => clearTimeout(timer));
  }

  stop() {
    this.stopped = true;
    for (const clear of this.timers) clear();
    if (this.ws) this.ws.close(1000, "closed");
  }

  /** What tab `tab` wants now: subscribe the new ones, unsubscribe the ones it dropped. */
  want(tab, specs) {
    const ids = new Set(specs.map((s) => s.id));
    for (const [id, want] of this.wants) {
      if (want.tab === tab && !ids.has(id)) {
        this.wants.delete(id);
        if (want.sent) this.send({ type: "unsubscribe", id });
      }
    }
    for (const spec of specs) {
      if (this.wants.has(spec.id)) continue;
      // keys: the keys of the rows the tab holds (keyJSON texts), kept up to date from what
      // the gateway sends, for resuming with them
      const keys = new Set(spec.keys || []);
      const want = { tab, spec, position: spec.since, keys, keyColumns: null, sent: false };
      this.wants.set(spec.id, want);
      this.subscribe(want);
    }
  }

  subscribe(want) {
    if (!this.open || want.sent) return;
    want.sent = true;
    const { id, table, filters } = want.spec;
    const message = { type: "subscribe", id, table, filters, since: want.position };
    let text = JSON.stringify(message);
    if (want.position && this.limits) {
      // resume with the keys we hold (their exact JSON, spliced in: a number received as a
      // string goes back as the number); with more than the gateway takes, a snapshot
      const resume = `${text.slice(0, -1)},"keys":[${[...want.keys].join(",")}]}`;
      const size = new TextEncoder().encode(resume).length;
      if (want.keys.size > this.limits.keys || size > this.limits.message) {
        text = JSON.stringify({ ...message, since: null });
      } else {
        text = resume;
      }
    }
    if (this.open) this.ws.send(text);
  }

  send(message) {
    if (this.open) this.ws.send(JSON.stringify(message));
  }

  /** Forget the subscriptions of tabs that went without saying bye (their lock is free). */
  async sweep() {
    const { held } = await navigator.locks.query();
    const live = new Set(held.map((lock) => lock.name));
    const name = this.realtime._lockName;
    const gone = new Set();
    for (const want of this.wants.values()) {
      if (!live.has(`${name} tab ${want.tab}`)) gone.add(want.tab);
    }
    for (const tab of gone) this.want(tab, []);
  }

  async connect() {
    if (this.stopped) return;
    this.status("connecting");
    let token;
    try {
      token = await this.token();
    } catch (error) {
      console.error("pyfuncs realtime: getting a token failed", error);
      return this.retry();
    }
    if (this.stopped) return;
    const ws = new WebSocket(this.realtime.url);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (event) => this.receive(parse(event.data), event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.open = false;
      this.ws = null;
      for (const want of this.wants.values()) want.sent = false;
      if (event.code === RESYNC_REQUIRED) {
        for (const want of this.wants.values()) want.position = null;
      }
      this.status("closed");
      this.retry();
    };
  }

  async token() {
    const { token } = this.realtime;
    return typeof token === "function" ? await token() : token;
  }

  retry() {
    if (this.stopped) return;
    const ceiling = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** this.retries++);
    this.after(ceiling / 2 + Math.random() * (ceiling / 2), () => this.connect());
  }

  status(state) {
    this.realtime._status(state);
    if (this.realtime._channel) this.realtime._tell({ kind: "status", state });
  }

  /** A gateway message (parsed) and its text, which other tabs get to parse themselves: the
   * numbers received as strings are known to the tab that parsed them (NUMBERS). */
  receive(message, text) {
    const want = message.sub ? this.wants.get(message.sub) : null;
    switch (message.type) {
      case "ready":
        this.limits = message.limits || null; // a gateway without them takes no keys
        if (!this.open) {
          this.open = true;
          this.retries = 0;
          this.status("open");
          for (const w of this.wants.values()) this.subscribe(w);
        }
        this.refreshBefore(message.expires);
        return;
      case "subscribed":
      case "change":
        if (want) {
          want.position = message.position;
          trackKeys(want, message);
        }
        break;
      case "heartbeat":
        for (const [id, position] of Object.entries(message.positions)) {
          const w = this.wants.get(id);
          if (w) w.position = position;
        }
        break;
      case "error":
        if (message.code === "token_expired" && !message.sub) return this.refresh();
        if (want && message.code === "resync_required") {
          want.position = null;
          want.sent = false;
          this.subscribe(want);
        } else if (want && RETRIED.has(message.code)) {
          want.sent = false;
          this.after(1000, () => this.subscribe(want));
        } else if (want) {
          this.wants.delete(message.sub);
        }
        if (!message.sub) console.warn("pyfuncs realtime:", message.code, message.message);
        break;
      default:
        return; // pong, unsubscribed
    }
    this.realtime._deliver(message);
    if (this.realtime._channel) this.realtime._tell({ kind: "gateway", text });
  }

  refreshBefore(expires) {
    // once per token: a token function that keeps returning the same token must not loop
    if (typeof expires !== "number" || expires === this.expires) return;
    this.expires = expires;
    const ms = (expires - this.realtime.refreshBefore) * 1000 - Date.now();
    this.after(Math.max(ms, 0), () => this.refresh());
  }

  async refresh() {
    try {
      const token = await this.token();
      this.send({ type: "auth", token });
    } catch (error) {
      console.error("pyfuncs realtime: refreshing the token failed", error);
    }
  }
}
