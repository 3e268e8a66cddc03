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

function defaultUrl() {
  const url = new URL("/realtime", import.meta.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** A row's key as the gateway writes keys: {column: value} for the key's columns. */
function keyObject(columns, row) {
  return Object.fromEntries(columns.map((c) => [c, row[c] ?? null]));
}

/** The leader's copy of the keys a subscription holds, after a gateway message for it. */
function trackKeys(want, message) {
  const { keys } = want;
  if (message.type === "subscribed") {
    want.keyColumns = message.key;
    if (!message.resumed) {
      keys.clear();
      for (const row of message.rows) {
        const key = keyObject(message.key, row);
        keys.set(JSON.stringify(key), key);
      }
    }
    for (const key of message.gone || []) keys.delete(JSON.stringify(keyObject(message.key, key)));
  } else if (message.op === "TRUNCATE") {
    keys.clear();
  } else if (message.key && want.keyColumns) {
    const key = keyObject(want.keyColumns, message.key);
    if (message.row == null) keys.delete(JSON.stringify(key));
    else keys.set(JSON.stringify(key), key);
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
    this.rows = new Map(); // JSON of the key values -> row
    this.keyColumns = null;
    this.position = null; // the last position applied: where to resume
    this.applied = new Set(); // the positions of the changes applied last (REMEMBERED)
    this.ready = false; // the snapshot (or the resume) has been confirmed
    this.closed = false;
  }

  /** What the leader needs to (re)subscribe it: where to resume, and the keys of the rows
   * it holds, so that the gateway can say which of them went while it was away. */
  spec() {
    const columns = this.keyColumns;
    const keys =
      this.position && columns ? [...this.rows.values()].map((row) => keyObject(columns, row)) : null;
    return { id: this.id, table: this.table, filters: this.filters, since: this.position, keys };
  }

  keyOf(values) {
    return JSON.stringify(this.keyColumns.map((c) => values[c] ?? null));
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
    const name = options.channel || `pyfuncs-realtime ${this.url}`;
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
      case "gateway": // the leader relays what the gateway sent
        return this._deliver(message.message);
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
      // keys: the keys of the rows the tab holds (JSON -> key object), kept up to date from
      // what the gateway sends, for resuming with them
      const keys = new Map((spec.keys || []).map((key) => [JSON.stringify(key), key]));
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
    if (want.position && this.limits) {
      // resume with the keys we hold; with more than the gateway takes, a snapshot instead
      message.keys = [...want.keys.values()];
      const size = new TextEncoder().encode(JSON.stringify(message)).length;
      if (message.keys.length > this.limits.keys || size > this.limits.message) {
        message.since = null;
        delete message.keys;
      }
    }
    this.send(message);
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
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
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

  receive(message) {
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
    if (this.realtime._channel) this.realtime._tell({ kind: "gateway", message });
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
