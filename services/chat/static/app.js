// durable-chat page: history then live over one WebSocket, resumed with a per-origin cursor (contract §2–§4).
// Plain JS, no build step. All text goes into the DOM with textContent, never innerHTML.
"use strict";

(() => {
  const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
  const MAX_CURSOR_ORIGINS = 32;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const SYNC_TIMEOUT_MS = 20000;
  const RETRYABLE = new Set(["publish_failed", "rate_limited"]);
  const MAX_TRIES = 6;
  const PAGE = 100;
  const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  const TYPING_EVERY_MS = 2000; // the server passes on one typing event per author every 2 s at most
  const TYPING_VALID_MS = 5000; // a typing event is shown this long after the last one

  const $ = (id) => document.getElementById(id);
  const ui = {
    join: $("join"), joinName: $("join-name"), joinRoom: $("join-room"),
    chat: $("chat"), where: $("where"), roomLabel: $("room-label"), nameLabel: $("name-label"), leave: $("leave"),
    state: $("state"), stateText: $("state-text"), notice: $("notice"), log: $("log"), older: $("older"),
    empty: $("empty"), messages: $("messages"), pending: $("pending"), errors: $("errors"),
    composer: $("composer"), text: $("text"),
    presence: $("presence"), members: $("members"), occupancy: $("occupancy"), typing: $("typing"),
  };

  const chat = {
    room: null, name: null, token: null,
    ws: null, conn: 0, connections: 0, synced: false, wantOpen: false,
    attempt: 0, retryAt: 0, retryTimer: null, tick: null, syncTimer: null,
    messages: new Map(), // id -> {message, el}
    sorted: [], // ids, ascending
    keys: new Set(), // author \0 client_id of shown messages: one message per key
    cursor: new Map(), // origin -> newest id held; Map order = recency of update
    pending: new Map(), // client_id -> {clientId, text, status, tries, el}
    historyDown: false, olderDone: false, probed: null,
    // After an incomplete `synced` the server still owes messages older than live ones shown since: reconnects
    // use the cursor of that connection until a sync completes, so live messages never move it past the gap.
    connectedWith: "", gapOpen: false, gapCursor: "",
    // Presence (contract §10): the room's members from the `presence` snapshot, kept current by join and leave;
    // who is typing, until their event is TYPING_VALID_MS old.
    members: new Map(), // author -> {since, connections}
    occupancy: 0,
    typing: new Map(), // author -> time (ms) the line stops showing them
    typingTimer: null, typedAt: 0,
  };

  // ---- helpers ----------------------------------------------------------------------------------------------
  function ulidTime(id) {
    let ms = 0;
    for (let i = 0; i < 10; i += 1) ms = ms * 32 + CROCKFORD.indexOf(id[i]);
    return ms;
  }

  function newClientId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return "p-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Relative to the page, so it works at any path behind a load balancer; wss: under https.
  function endpoint(path, params) {
    const url = new URL(path, window.location.href);
    if (path === "ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = new URLSearchParams(params).toString();
    return url.toString();
  }

  function keyOf(message) {
    return message.client_id == null ? null : `${message.author ?? ""}\u0000${message.client_id}`;
  }

  function hue(text) {
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function timeText(ms) {
    const d = new Date(ms);
    const sameDay = d.toDateString() === new Date().toDateString();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return sameDay ? hm : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${hm}`;
  }

  // ---- connection state -------------------------------------------------------------------------------------
  function setState(kind, text) {
    ui.state.dataset.state = kind;
    ui.state.dataset.connections = String(chat.connections);
    ui.stateText.textContent = text;
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
  }

  function showError(code, detail) {
    const item = el("div", "error");
    item.dataset.code = code;
    item.append(el("b", null, code.replace(/_/g, " ")), el("span", null, detail ? ` ${detail}` : ""));
    const close = el("button", "link", "×");
    close.type = "button";
    close.title = "dismiss";
    close.addEventListener("click", () => item.remove());
    item.append(close);
    ui.errors.append(item);
    while (ui.errors.children.length > 4) ui.errors.firstElementChild.remove();
    setTimeout(() => item.remove(), 10000);
  }

  // ---- the WebSocket ----------------------------------------------------------------------------------------
  function cursorParam() {
    return Array.from(chat.cursor.values()).join(",");
  }

  function noteCursor(message) {
    if (!message.origin) return;
    const held = chat.cursor.get(message.origin);
    if (held !== undefined && held >= message.id) return;
    chat.cursor.delete(message.origin);
    chat.cursor.set(message.origin, message.id);
    while (chat.cursor.size > MAX_CURSOR_ORIGINS) chat.cursor.delete(chat.cursor.keys().next().value);
  }

  function connect() {
    clearTimeout(chat.retryTimer);
    clearInterval(chat.tick);
    if (!chat.wantOpen) return;
    const params = { room: chat.room, coalesce: "1" };
    if (chat.name) params.name = chat.name;
    if (chat.token) params.token = chat.token;
    const after = chat.gapOpen ? chat.gapCursor : cursorParam();
    if (after) params.after = after;
    chat.connectedWith = after;
    const conn = ++chat.conn;
    chat.synced = false;
    chat.historyDown = false;
    setState("connecting", chat.attempt ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(endpoint("ws", params));
    } catch (err) {
      console.error("durable-chat: cannot open the WebSocket", err);
      scheduleReconnect("cannot connect");
      return;
    }
    chat.ws = ws;
    chat.syncTimer = setTimeout(() => {
      if (conn === chat.conn && !chat.synced) ws.close(4000, "sync timeout");
    }, SYNC_TIMEOUT_MS);
    ws.onopen = () => {
      if (conn !== chat.conn) return;
      chat.connections += 1;
      setState("connecting", "loading history…");
    };
    ws.onmessage = (event) => {
      if (conn !== chat.conn || typeof event.data !== "string") return;
      // With coalesce=1 a frame may hold several JSON objects separated by \n.
      for (const line of event.data.split("\n")) {
        if (!line) continue;
        let frame;
        try {
          frame = JSON.parse(line);
        } catch {
          continue;
        }
        onFrame(frame);
      }
    };
    ws.onclose = (event) => {
      if (conn !== chat.conn) return;
      clearTimeout(chat.syncTimer);
      clearPresence(); // the next connection's snapshot says who is here then
      chat.ws = null;
      chat.synced = false;
      for (const p of chat.pending.values()) if (p.status === "sending") p.sentOn = 0;
      if (!chat.wantOpen) return;
      if (event.code === 1008) {
        chat.wantOpen = false;
        setState("refused", `refused: ${event.reason || "policy"}`);
        showError("refused", `${event.reason || "the server refused the connection"}. Click the status to retry.`);
        return;
      }
      scheduleReconnect(event.code === 1013 ? "too slow, reconnecting" : "disconnected");
    };
  }

  function scheduleReconnect(why) {
    // Exponential backoff with full jitter: after a mass close (rolling restart, broker loss) every page starts
    // its schedule at once, and only a delay drawn over the whole interval spreads their returns out.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** chat.attempt);
    const delay = Math.random() * ceiling;
    chat.attempt += 1;
    chat.retryAt = Date.now() + delay;
    chat.retryTimer = setTimeout(connect, delay);
    const show = () => {
      const s = Math.max(0, Math.ceil((chat.retryAt - Date.now()) / 1000));
      setState("reconnecting", `${why} · retrying in ${s}s`);
    };
    show();
    clearInterval(chat.tick);
    chat.tick = setInterval(show, 1000);
  }

  function retryNow() {
    if (chat.ws || !chat.room) return;
    chat.wantOpen = true;
    connect();
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "message":
        onMessage(frame, true);
        break;
      case "ack":
        onAck(frame);
        break;
      case "error":
        onError(frame);
        break;
      case "synced":
        onSynced(frame.complete !== false);
        break;
      case "presence":
        onPresence(frame);
        break;
      case "join":
        onJoin(frame.author);
        break;
      case "leave":
        onLeave(frame.author);
        break;
      case "typing":
        onTyping(frame.author);
        break;
      default:
        break; // unknown frame types are ignored (newer server)
    }
  }

  function onSynced(complete) {
    if (complete) {
      chat.gapOpen = false;
      chat.historyDown = false;
    } else if (!chat.gapOpen && chat.connectedWith) {
      // Connected without a cursor it asked for recent context only (older pages come from "Load earlier"):
      // what it must never miss is what comes after what it holds, so then it keeps its own cursor.
      chat.gapOpen = true;
      chat.gapCursor = chat.connectedWith;
    }
    showNotice(chat.historyDown ? "History is unavailable right now: showing recent messages only. " +
      "Missed messages will appear in place when the history service recovers." : "");
    if (chat.synced) { // the late, complete `synced` after a backfill: its messages were inserted by id
      probeOlder();
      return;
    }
    clearTimeout(chat.syncTimer);
    chat.synced = true;
    chat.attempt = 0;
    setState("live", "live");
    updateEmpty();
    probeOlder();
    // Resend what was never acknowledged, with the same client_id: the server answers a repeat with its first id.
    for (const p of chat.pending.values()) if (p.status === "sending") transmit(p);
  }

  function onError(frame) {
    if (frame.code === "history_unavailable") {
      chat.historyDown = true;
      showNotice("History is unavailable right now: showing recent messages only.");
      return;
    }
    const p = frame.client_id != null ? chat.pending.get(frame.client_id) : undefined;
    if (p && RETRYABLE.has(frame.code) && p.tries < MAX_TRIES) {
      const wait = Math.min(8000, 500 * 2 ** p.tries) * (0.5 + Math.random() / 2);
      p.status = "sending";
      p.sentOn = 0;
      clearTimeout(p.retry);
      p.retry = setTimeout(() => transmit(p), wait);
      if (frame.code === "rate_limited") showError(frame.code, "Slow down: sending again in a moment.");
      return;
    }
    showError(frame.code || "error", frame.detail || "");
    if (p) failPending(p, frame.code, frame.detail);
  }

  // ---- messages ---------------------------------------------------------------------------------------------
  function onMessage(message, live) {
    if (typeof message.id !== "string") return;
    if (live) noteCursor(message);
    if (chat.messages.has(message.id)) return; // a duplicate id (cursor overlap, reconnect)
    const key = keyOf(message);
    if (key && chat.keys.has(key)) return; // a resend stored under a second id: show one per (author, client_id)
    if (key) chat.keys.add(key);
    const p = message.client_id != null ? chat.pending.get(message.client_id) : undefined;
    if (p) dropPending(p);
    const mine = p !== undefined || (chat.name !== null && message.author === chat.name);
    if (live && message.author != null && chat.typing.delete(message.author)) renderTyping(); // they sent it
    insert(message, mine);
  }

  function insert(message, mine) {
    const node = renderMessage(message, mine);
    const stick = nearBottom();
    // Ids sort as strings: binary search for the place, most often the end.
    let lo = 0;
    let hi = chat.sorted.length;
    if (hi && chat.sorted[hi - 1] < message.id) lo = hi;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (chat.sorted[mid] < message.id) lo = mid + 1;
      else hi = mid;
    }
    const next = chat.sorted[lo];
    chat.sorted.splice(lo, 0, message.id);
    chat.messages.set(message.id, { message, el: node });
    if (next === undefined) ui.messages.append(node);
    else ui.messages.insertBefore(node, chat.messages.get(next).el);
    updateEmpty();
    if (stick) scrollToBottom();
  }

  function renderMessage(message, mine) {
    const author = message.author ?? "anonymous";
    const item = el("li", mine ? "msg mine" : "msg");
    item.dataset.id = message.id;
    if (message.client_id != null) item.dataset.clientId = message.client_id;
    const avatar = el("span", "avatar", author.slice(0, 1).toUpperCase());
    avatar.style.setProperty("--hue", String(hue(author)));
    const body = el("div", "body");
    const meta = el("div", "meta");
    meta.append(el("span", "author", author));
    const time = el("time", null, timeText(message.ts));
    time.dateTime = new Date(message.ts).toISOString();
    time.title = new Date(message.ts).toLocaleString();
    meta.append(time);
    body.append(meta, el("div", "text", message.text));
    item.append(avatar, body);
    return item;
  }

  function updateEmpty() {
    ui.empty.hidden = !(chat.synced && chat.sorted.length === 0 && chat.pending.size === 0);
  }

  function nearBottom() {
    return ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 48;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  // Offer "Load earlier messages" only when the history holds something before the oldest message shown.
  async function probeOlder() {
    if (chat.olderDone || chat.historyDown || !chat.sorted.length) {
      ui.older.hidden = true;
      return;
    }
    if (chat.probed === chat.sorted[0]) return; // already known for this oldest message
    chat.probed = chat.sorted[0];
    try {
      const response = await fetch(olderUrl(1), { headers: authHeaders() });
      if (response.ok) {
        const page = await response.json();
        chat.olderDone = page.length === 0;
        ui.older.hidden = chat.olderDone;
      }
    } catch {
      // offline: the button stays hidden
    }
  }

  function authHeaders() {
    return chat.token ? { Authorization: `Bearer ${chat.token}` } : {};
  }

  function olderUrl(limit) {
    return endpoint(`api/rooms/${encodeURIComponent(chat.room)}/messages`,
      { before: chat.sorted[0], limit: String(limit) });
  }

  async function loadOlder() {
    if (!chat.sorted.length) return;
    ui.older.disabled = true;
    try {
      const response = await fetch(olderUrl(PAGE), { headers: authHeaders() });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        showError(body.error?.code || `http_${response.status}`, body.error?.detail || "could not load history");
        return;
      }
      const page = await response.json();
      const height = ui.log.scrollHeight;
      const top = ui.log.scrollTop;
      for (const message of page) onMessage(message, false);
      ui.log.scrollTop = top + (ui.log.scrollHeight - height);
      if (page.length < PAGE) {
        chat.olderDone = true;
        ui.older.hidden = true;
      }
    } catch (err) {
      showError("network", err.message);
    } finally {
      ui.older.disabled = false;
    }
  }

  // ---- presence and typing ----------------------------------------------------------------------------------
  function onPresence(frame) {
    chat.members = new Map();
    for (const m of frame.members || []) chat.members.set(m.author, { since: m.since, connections: m.connections });
    chat.occupancy = frame.occupancy || 0;
    renderMembers();
  }

  function onJoin(author) {
    if (typeof author !== "string" || chat.members.has(author)) return;
    chat.members.set(author, { since: Date.now(), connections: 1 });
    chat.occupancy += 1;
    renderMembers();
  }

  function onLeave(author) {
    if (!chat.members.delete(author)) return;
    chat.occupancy = Math.max(chat.members.size, chat.occupancy - 1);
    if (chat.typing.delete(author)) renderTyping();
    renderMembers();
  }

  function onTyping(author) {
    if (typeof author !== "string") return;
    chat.typing.set(author, Date.now() + TYPING_VALID_MS);
    renderTyping();
  }

  function renderMembers() {
    const sorted = Array.from(chat.members.entries()).sort((a, b) => a[1].since - b[1].since || (a[0] < b[0] ? -1 : 1));
    ui.members.replaceChildren(...sorted.map(([author, m]) => {
      const item = el("li", author === chat.name ? "member me" : "member", author);
      item.dataset.author = author;
      item.style.setProperty("--hue", String(hue(author)));
      item.title = `here since ${timeText(m.since)}`;
      if (m.connections > 1) item.append(el("span", "count", `×${m.connections}`));
      return item;
    }));
    const occupancy = Math.max(chat.occupancy, chat.members.size);
    ui.occupancy.textContent = `${occupancy} connected`;
    ui.presence.hidden = false;
  }

  function renderTyping() {
    clearTimeout(chat.typingTimer);
    const now = Date.now();
    for (const [author, until] of chat.typing) if (until <= now) chat.typing.delete(author);
    const names = Array.from(chat.typing.keys());
    let line = "";
    if (names.length === 1) line = `${names[0]} is typing…`;
    else if (names.length === 2) line = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) line = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    ui.typing.textContent = line;
    if (names.length) {
      const next = Math.min(...chat.typing.values()) - now;
      chat.typingTimer = setTimeout(renderTyping, Math.max(50, next));
    }
  }

  function clearPresence() {
    chat.members = new Map();
    chat.occupancy = 0;
    chat.typing.clear();
    ui.members.replaceChildren();
    ui.presence.hidden = true;
    renderTyping();
  }

  // Tell the room this user is writing: on input, at most once per TYPING_EVERY_MS (the server's throttle).
  function typed() {
    if (!ui.text.value.trim() || !chat.ws || !chat.synced || chat.ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (now - chat.typedAt < TYPING_EVERY_MS) return;
    chat.typedAt = now;
    chat.ws.send('{"type":"typing"}');
  }

  // ---- sending ----------------------------------------------------------------------------------------------
  function send(text) {
    const p = { clientId: newClientId(), text, status: "sending", tries: 0, el: null, sentOn: 0 };
    p.el = renderPending(p);
    chat.pending.set(p.clientId, p);
    ui.pending.append(p.el);
    updateEmpty();
    scrollToBottom();
    transmit(p);
  }

  function transmit(p) {
    clearTimeout(p.retry);
    if (p.status !== "sending") return;
    // Sent only on a synced connection; otherwise it goes out after the next `synced`.
    if (!chat.ws || !chat.synced || chat.ws.readyState !== WebSocket.OPEN) return;
    if (p.sentOn === chat.conn) return; // already on this connection, awaiting its answer
    chat.ws.send(JSON.stringify({ type: "send", text: p.text, client_id: p.clientId }));
    p.tries += 1;
    p.sentOn = chat.conn;
  }

  function renderPending(p) {
    const item = el("li", "msg mine pending");
    item.dataset.clientId = p.clientId;
    const avatar = el("span", "avatar", (chat.name || "?").slice(0, 1).toUpperCase());
    avatar.style.setProperty("--hue", String(hue(chat.name || "anonymous")));
    const body = el("div", "body");
    const meta = el("div", "meta");
    meta.append(el("span", "author", chat.name || "anonymous"), el("span", "status", "sending…"));
    body.append(meta, el("div", "text", p.text));
    item.append(avatar, body);
    return item;
  }

  function onAck(frame) {
    const p = chat.pending.get(frame.client_id);
    if (!p) return;
    if (chat.messages.has(frame.id)) {
      dropPending(p);
      return;
    }
    // Accepted by the broker; the message itself arrives through the room's feed and then takes its place.
    p.status = "acked";
    p.el.classList.remove("pending");
    p.el.classList.add("acked");
    p.el.dataset.id = frame.id;
    p.el.querySelector(".status").textContent = timeText(ulidTime(frame.id));
  }

  function failPending(p, code, detail) {
    p.status = "failed";
    p.el.classList.remove("pending");
    p.el.classList.add("failed");
    const status = p.el.querySelector(".status");
    status.textContent = `not sent: ${code}${detail ? ` (${detail})` : ""}`;
    const actions = el("span", "actions");
    if (RETRYABLE.has(code)) {
      const retry = el("button", "link", "retry");
      retry.type = "button";
      retry.addEventListener("click", () => {
        p.status = "sending";
        p.tries = 0;
        p.sentOn = 0;
        p.el.classList.remove("failed");
        p.el.classList.add("pending");
        status.textContent = "sending…";
        actions.remove();
        transmit(p);
      });
      actions.append(retry);
    }
    const discard = el("button", "link", "discard");
    discard.type = "button";
    discard.addEventListener("click", () => dropPending(p));
    actions.append(discard);
    status.after(actions);
  }

  function dropPending(p) {
    clearTimeout(p.retry);
    chat.pending.delete(p.clientId);
    p.el.remove();
    updateEmpty();
  }

  // ---- joining and leaving ----------------------------------------------------------------------------------
  function join(name, room) {
    chat.name = name;
    chat.room = room;
    chat.messages.clear();
    chat.sorted = [];
    chat.keys.clear();
    chat.cursor.clear();
    chat.pending.clear();
    chat.olderDone = false;
    chat.probed = null;
    chat.attempt = 0;
    ui.messages.replaceChildren();
    ui.pending.replaceChildren();
    ui.errors.replaceChildren();
    showNotice("");
    ui.roomLabel.textContent = `#${room}`;
    ui.nameLabel.textContent = name;
    document.title = `#${room} · durable-chat`;
    ui.join.hidden = true;
    ui.chat.hidden = false;
    document.body.classList.add("chat-open");
    ui.where.hidden = false;
    try {
      localStorage.setItem("durable-chat.name", name);
      localStorage.setItem("durable-chat.room", room);
    } catch {
      // storage may be disabled; nothing else depends on it
    }
    const url = new URL(window.location.href);
    url.searchParams.set("room", room);
    url.searchParams.set("name", name);
    window.history.replaceState(null, "", url);
    chat.wantOpen = true;
    connect();
    ui.text.focus();
  }

  function leave() {
    chat.wantOpen = false;
    chat.conn += 1;
    clearTimeout(chat.retryTimer);
    clearInterval(chat.tick);
    if (chat.ws) chat.ws.close(1000, "left");
    chat.ws = null;
    clearPresence();
    setState("idle", "not connected");
    ui.chat.hidden = true;
    ui.where.hidden = true;
    document.body.classList.remove("chat-open");
    ui.join.hidden = false;
    const url = new URL(window.location.href);
    url.searchParams.delete("room");
    window.history.replaceState(null, "", url);
    ui.joinName.value = chat.name || "";
    ui.joinRoom.value = chat.room || "general";
    document.title = "durable-chat";
  }

  ui.join.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.joinName.value.trim();
    const room = ui.joinRoom.value.trim();
    if (!name || name.length > 32) {
      ui.joinName.setCustomValidity("1 to 32 characters");
      ui.joinName.reportValidity();
      return;
    }
    if (!ROOM_RE.test(room)) {
      ui.joinRoom.reportValidity();
      return;
    }
    join(name, room);
  });
  ui.joinName.addEventListener("input", () => ui.joinName.setCustomValidity(""));
  ui.leave.addEventListener("click", leave);
  ui.state.addEventListener("click", retryNow);
  ui.older.addEventListener("click", loadOlder);

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value;
    if (!text.trim()) return;
    send(text);
    ui.text.value = "";
    autosize();
  });
  ui.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  function autosize() {
    ui.text.style.height = "auto";
    ui.text.style.height = `${Math.min(ui.text.scrollHeight, 160)}px`;
  }
  ui.text.addEventListener("input", autosize);
  ui.text.addEventListener("input", typed);

  window.addEventListener("online", () => {
    if (chat.wantOpen && !chat.ws) {
      chat.attempt = 0;
      connect();
    }
  });

  // ---- start ------------------------------------------------------------------------------------------------
  const params = new URLSearchParams(window.location.search);
  const hash = new URLSearchParams(window.location.hash.slice(1));
  chat.token = hash.get("token") || null; // a JWT in the fragment never reaches server logs
  let storedName = "";
  let storedRoom = "";
  try {
    storedName = localStorage.getItem("durable-chat.name") || "";
    storedRoom = localStorage.getItem("durable-chat.room") || "";
  } catch {
    // no storage
  }
  const name = (params.get("name") || storedName).trim();
  const room = (params.get("room") || "").trim();
  ui.joinName.value = name;
  ui.joinRoom.value = room || storedRoom || "general";
  if (room && ROOM_RE.test(room) && name && name.length <= 32) join(name, room);
  else (name ? ui.joinRoom : ui.joinName).focus();
})();
