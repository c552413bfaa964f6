// SixChat web UI. Hand-written, no framework, no build step. Everything a peer controls
// (bodies, identities, file names, reasons) is inserted with textContent or as an attribute
// value, never as markup. The JSON API is described in docs/web.md.
"use strict";

(function () {
  const state = {
    me: "",
    csrf: "",
    peer: null, // the open conversation (identity as typed or as the agent shows it)
    contacts: [],
    refused: new Set(), // key changes refused in this page (they stay pending in the agent)
    shownKey: null, // the contact whose key change the banner shows
    pendingStates: new Map(), // message id -> state seen before its element exists
    timers: {},
    lastTyping: 0,
    typingClear: null,
    events: null,
    wasDown: false,
  };
  const HISTORY = 50;
  const TICKS = {
    queued: ["\u25CB", "queued"],
    sent: ["\u2713", "sent"],
    delivered: ["\u2713\u2713", "delivered"],
    failed: ["\u2717", "failed"],
    expired: ["\u2717", "expired"],
    cancelled: ["\u2717", "cancelled"],
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // strings: text nodes
    }
    return node;
  }

  function norm(identity) {
    const at = identity.lastIndexOf("@");
    return at < 0 ? identity : identity.slice(0, at) + "@" + identity.slice(at + 1).toLowerCase();
  }
  const samePeer = (a, b) => a !== null && b !== null && norm(a) === norm(b);

  function showError(text) {
    $("error").textContent = text || "";
  }

  async function api(method, path, body) {
    const options = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    if (method !== "GET") options.headers["X-Sixchat-CSRF"] = state.csrf;
    const response = await fetch(path, options);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      throw new Error((data && data.error) || "HTTP " + response.status);
    }
    return data;
  }

  function debounce(name, delay, fn) {
    clearTimeout(state.timers[name]);
    state.timers[name] = setTimeout(() => fn().catch((e) => showError(e.message)), delay);
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return isNaN(date) ? "" : date.toLocaleString();
  }

  function formatSize(n) {
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = -1;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return value.toFixed(1) + " " + units[unit];
  }

  function fingerprint(hex) {
    return (hex.match(/.{1,4}/g) || []).join(" ");
  }

  // -- views ----------------------------------------------------------------------------

  function currentView() {
    const name = location.hash.replace("#", "");
    return ["chats", "contacts", "status"].includes(name) ? name : "chats";
  }

  function showView() {
    const name = currentView();
    for (const view of ["chats", "contacts", "status"]) {
      $("view-" + view).hidden = view !== name;
      const link = $("nav-" + view);
      if (view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (name === "contacts") loadContacts().catch((e) => showError(e.message));
    if (name === "status") loadStatus().catch((e) => showError(e.message));
  }

  // -- conversations --------------------------------------------------------------------

  async function loadConversations() {
    const [conversations, transfers] = await Promise.all([
      api("GET", "/api/conversations"),
      api("GET", "/api/files"),
    ]);
    // a peer who only sent (or was sent) files has no messages: list it too
    for (const t of transfers) {
      if (!conversations.some((c) => samePeer(c.peer, t.peer))) {
        conversations.push({ peer: t.peer, last_body: "file: " + t.name, unread: 0 });
      }
    }
    const list = $("conversations");
    list.replaceChildren();
    for (const c of conversations) {
      const button = el(
        "button",
        { type: "button", "data-peer": c.peer },
        c.unread ? el("span", { className: "unread", text: String(c.unread),
          "aria-label": c.unread + " unread" }) : null,
        el("span", { className: "conv-peer", text: c.peer }),
        el("span", { className: "conv-last", text: c.last_body || "" }),
      );
      if (samePeer(c.peer, state.peer)) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openConversation(c.peer));
      list.append(el("li", {}, button));
    }
    if (state.peer === null && conversations.length) {
      await openConversation(conversations[0].peer, false);
    }
  }

  async function openConversation(peer, focus = true) {
    state.peer = peer;
    $("peer-title").textContent = peer;
    $("typing").textContent = "";
    for (const id of ["composer-text", "send", "file-input", "file-send"]) $(id).disabled = false;
    for (const button of $("conversations").querySelectorAll("button")) {
      if (samePeer(button.getAttribute("data-peer"), peer)) {
        button.setAttribute("aria-current", "true");
      } else {
        button.removeAttribute("aria-current");
      }
    }
    updateKeyNote();
    await loadHistory();
    await loadFiles();
    debounce("conversations", 50, loadConversations); // its unread count is now 0
    if (focus) $("composer-text").focus();
  }

  function tick(message) {
    const [symbol, label] = TICKS[message.state] || ["?", message.state];
    let text = label;
    if (message.total_nodes > 1) text += " (" + message.delivered_nodes + "/" + message.total_nodes + " devices)";
    return el("span", { className: "tick", "data-state": message.state, title: text,
      "aria-label": text, text: symbol });
  }

  function messageItem(m) {
    const pending = state.pendingStates.get(m.id);
    if (pending && m.direction === "out" && m.state !== "delivered") {
      m = Object.assign({}, m, pending);
    }
    const item = el(
      "li",
      { className: "msg " + (m.direction === "out" ? "out" : "in"), "data-id": m.id },
      el("p", { className: "body", text: m.body }),
      el("div", { className: "meta" }, el("time", { datetime: m.at || "", text: when(m.at) }),
        m.direction === "out" ? tick(m) : null),
    );
    return item;
  }

  async function loadHistory() {
    if (state.peer === null) return;
    const peer = state.peer;
    const query = "?peer=" + encodeURIComponent(peer) + "&limit=" + HISTORY;
    const messages = await api("GET", "/api/history" + query);
    if (!samePeer(peer, state.peer)) return;
    const list = $("messages");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
    list.replaceChildren(...messages.map(messageItem));
    if (atBottom || messages.length) list.scrollTop = list.scrollHeight;
  }

  function findMessage(id) {
    for (const item of $("messages").children) {
      if (item.getAttribute("data-id") === id) return item;
    }
    return null;
  }

  function onDelivery(event) {
    const item = findMessage(event.id);
    const update = { state: event.state, delivered_nodes: event.delivered_nodes,
      total_nodes: event.total_nodes };
    if (item === null) {
      state.pendingStates.set(event.id, update);
      return;
    }
    const old = item.querySelector(".tick");
    if (old !== null) old.replaceWith(tick(update));
  }

  async function send(event) {
    event.preventDefault();
    const box = $("composer-text");
    const text = box.value;
    if (!text.trim() || state.peer === null) return;
    $("send").disabled = true;
    try {
      await api("POST", "/api/send", { to: state.peer, body: text });
      box.value = "";
      state.lastTyping = 0; // the next keystroke starts a new "composing"
      showError("");
      await loadHistory();
      debounce("conversations", 100, loadConversations);
    } catch (e) {
      showError("Not sent: " + e.message);
    } finally {
      $("send").disabled = false;
      box.focus();
    }
  }

  function typed() {
    const now = Date.now();
    if (state.peer === null || now - state.lastTyping < 4000) return;
    state.lastTyping = now;
    api("POST", "/api/typing", { to: state.peer, state: "composing" }).catch(() => {});
  }

  function onTyping(event) {
    if (!samePeer(event.peer, state.peer)) return;
    clearTimeout(state.typingClear);
    if (event.state === "composing") {
      $("typing").textContent = event.peer + " is typing\u2026";
      state.typingClear = setTimeout(() => { $("typing").textContent = ""; }, 15000);
    } else {
      $("typing").textContent = "";
    }
  }

  // -- files ----------------------------------------------------------------------------

  async function loadFiles() {
    if (state.peer === null) return;
    const peer = state.peer;
    const transfers = await api("GET", "/api/files");
    if (!samePeer(peer, state.peer)) return;
    const list = $("files");
    list.replaceChildren();
    for (const t of transfers.filter((t) => samePeer(t.peer, peer))) {
      const arrow = t.direction === "in" ? "\u2190 " : "\u2192 ";
      const progress = t.size ? Math.floor((100 * t.received) / t.size) : 100;
      const item = el("li", { "data-id": t.id, "data-state": t.state },
        arrow, el("span", { className: "file-name", text: t.name }),
        " (" + formatSize(t.size) + ", " + t.state + (t.state === "received" ||
          t.state === "delivered" ? "" : ", " + progress + " %") + ")");
      if (t.direction === "in" && t.state === "received") {
        item.append(" ", el("a", { href: "/api/files/" + encodeURIComponent(t.id),
          download: t.name, text: "download" }));
      }
      list.append(item);
    }
  }

  function sendFile(event) {
    event.preventDefault();
    const input = $("file-input");
    const file = input.files[0];
    if (!file || state.peer === null) return;
    const bar = $("file-progress");
    const status = $("file-status");
    const request = new XMLHttpRequest();
    const query = "?to=" + encodeURIComponent(state.peer) + "&name=" + encodeURIComponent(file.name);
    request.open("POST", "/api/files" + query);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.setRequestHeader("X-Sixchat-CSRF", state.csrf);
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "uploading " + file.name;
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.floor((100 * e.loaded) / e.total);
    });
    request.addEventListener("load", () => {
      let data = null;
      try { data = JSON.parse(request.responseText); } catch (e) { data = null; }
      if (request.status === 200) {
        bar.value = 100;
        status.textContent = file.name + " queued";
        input.value = "";
      } else {
        status.textContent = "";
        showError("File not sent: " + ((data && data.error) || "HTTP " + request.status));
      }
      loadFiles().catch((e) => showError(e.message));
    });
    request.addEventListener("error", () => {
      status.textContent = "";
      showError("File not sent: the connection to the agent failed");
    });
    request.send(file);
  }

  // -- contacts and key changes ---------------------------------------------------------

  async function loadContacts() {
    state.contacts = await api("GET", "/api/contacts");
    const body = $("contacts-body");
    body.replaceChildren();
    for (const c of state.contacts) {
      const keys = el("ul", { className: "fingerprints" });
      for (const key of c.keys) keys.append(el("li", { text: fingerprint(key) }));
      for (const key of c.pending_keys) {
        keys.append(el("li", { className: "warning", text: "new, not accepted: " + fingerprint(key) }));
      }
      const cell = el("td", {});
      if (c.key_change_pending) {
        const accept = el("button", { type: "button", text: "Accept new key" });
        accept.addEventListener("click", () => decide(c.identity, true));
        cell.append(el("span", { className: "warning", text: "key changed " }), accept);
      } else {
        cell.textContent = "pinned";
      }
      body.append(el("tr", { "data-identity": c.identity },
        el("td", { text: c.identity }), el("td", {}, keys), cell));
    }
    checkKeyChanges();
    updateKeyNote();
  }

  function checkKeyChanges() {
    const changed = state.contacts.find((c) => c.key_change_pending && !state.refused.has(norm(c.identity)));
    const overlay = $("keychange");
    if (!changed) {
      if (!overlay.hidden) {
        overlay.hidden = true;
        $("main").inert = false;
        $("top").inert = false;
      }
      state.shownKey = null;
      return;
    }
    state.shownKey = changed.identity;
    $("keychange-text").textContent = "The key of " + changed.identity + " changed. Someone may be " +
      "impersonating them, or they have a new certificate. Until you accept the new key, " +
      "messages to and from that key are held.";
    const keys = $("keychange-keys");
    keys.replaceChildren(...changed.pending_keys.map((k) => el("li", { text: fingerprint(k) })));
    const wasHidden = overlay.hidden;
    overlay.hidden = false;
    $("main").inert = true; // blocking: nothing else can be used until a decision
    $("top").inert = true;
    if (wasHidden) $("keychange-accept").focus();
  }

  async function decide(identity, accept) {
    try {
      if (accept) {
        await api("POST", "/api/trust", { identity: identity, accept: true });
        state.refused.delete(norm(identity));
      } else {
        state.refused.add(norm(identity));
      }
      await loadContacts();
    } catch (e) {
      showError(e.message);
    }
  }

  function updateKeyNote() {
    const note = $("key-note");
    const contact = state.contacts.find((c) => samePeer(c.identity, state.peer));
    if (contact && contact.key_change_pending) {
      note.textContent = "The key of " + contact.identity + " changed and is not accepted: " +
        "messages are held. Accept it under Contacts after checking it.";
      note.hidden = false;
    } else {
      note.hidden = true;
    }
  }

  // -- status ---------------------------------------------------------------------------

  function describe(value) {
    if (value === null || value === undefined) return "\u2014";
    if (typeof value !== "object") return String(value);
    if (Array.isArray(value)) return value.map(describe).join("\n") || "\u2014";
    return Object.entries(value)
      .filter(([, v]) => v !== null && !(Array.isArray(v) && v.length === 0))
      .map(([k, v]) => k.replace(/_/g, " ") + ": " + (typeof v === "object" ? JSON.stringify(v) : v))
      .join("\n") || "\u2014";
  }

  async function loadStatus() {
    const s = await api("GET", "/api/status");
    const cert = s.certificate || {};
    const registry = s.registry;
    const rows = [
      ["Identity", s.identity],
      ["This node", s.node],
      ["Listening", s.listening],
      ["Registry", registry ? registry.state + " with " + registry.registry : "none"],
      ["Own nodes at the registry", s.own_nodes ? s.own_nodes.join(", ") || "\u2014" : s.own_nodes_error || "\u2014"],
      ["Certificate", cert.subject + ", issued by " + cert.issuer],
      ["Certificate expires", when(cert.not_after)],
      ["Own key fingerprint", fingerprint(cert.spki_sha256 || "")],
      ["Sessions", (s.sessions || []).map((x) => x.peer + " (" + (x.node || "incoming") + ", " + x.suite + ")").join("\n") || "none"],
      ["Outbox", describe(s.outbox)],
      ["Revocation", describe(s.revocation)],
    ];
    const list = $("status");
    list.replaceChildren();
    for (const [name, value] of rows) {
      list.append(el("dt", { text: name }), el("dd", { text: value === undefined ? "\u2014" : String(value) }));
    }
  }

  // -- live events ----------------------------------------------------------------------

  function reloadAll() {
    debounce("conversations", 0, loadConversations);
    debounce("history", 0, loadHistory);
    debounce("files", 0, loadFiles);
    debounce("contacts", 0, loadContacts);
    if (currentView() === "status") debounce("status", 0, loadStatus);
  }

  function onEvent(event) {
    switch (event.type) {
      case "message":
        if (samePeer(event.peer, state.peer)) {
          $("typing").textContent = "";
          debounce("history", 50, loadHistory);
        }
        debounce("conversations", 100, loadConversations);
        break;
      case "delivery":
        onDelivery(event);
        if (event.state === "queued" && samePeer(event.peer, state.peer)) debounce("history", 100, loadHistory);
        break;
      case "typing":
        onTyping(event);
        break;
      case "key_change":
        debounce("contacts", 50, loadContacts);
        break;
      case "file":
        debounce("files", 200, loadFiles);
        debounce("conversations", 200, loadConversations);
        break;
      case "session":
      case "presence":
        if (currentView() === "status") debounce("status", 200, loadStatus);
        break;
      case "unknown_recipient":
        if (samePeer(event.peer, state.peer)) showError(event.peer + " is unknown to the registry: " + event.reason);
        break;
      case "overflow":
        reloadAll();
        break;
    }
  }

  function listen() {
    const source = new EventSource("/api/events");
    state.events = source;
    source.addEventListener("open", () => {
      $("live").textContent = "live";
      if (state.wasDown) reloadAll(); // events were missed while away
      state.wasDown = false;
    });
    source.addEventListener("error", () => {
      $("live").textContent = "reconnecting\u2026";
      state.wasDown = true;
      if (source.readyState === EventSource.CLOSED) {
        // refused (a restarted agent no longer knows this session) or gone: ask why
        setTimeout(() => {
          api("GET", "/api/session").then(listen, (e) => {
            $("live").textContent = "disconnected";
            showError("Lost the agent (" + e.message + "). If it restarted, open its new " +
              "link: sixchat web");
            setTimeout(listen, 10000);
          });
        }, 2000);
      }
    });
    source.addEventListener("message", (e) => {
      let event = null;
      try { event = JSON.parse(e.data); } catch (err) { return; }
      onEvent(event);
    });
  }

  // -- start ----------------------------------------------------------------------------

  async function start() {
    $("composer").addEventListener("submit", send);
    $("composer-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("composer-text").addEventListener("input", typed);
    $("file-form").addEventListener("submit", sendFile);
    $("new-chat").addEventListener("submit", (e) => {
      e.preventDefault();
      const peer = $("new-peer").value.trim();
      if (!/^[^@\s]+@[^@\s]+$/.test(peer)) {
        showError("Give an identity such as bob@example.com");
        return;
      }
      $("new-peer").value = "";
      showError("");
      openConversation(peer).catch((err) => showError(err.message));
    });
    $("keychange-accept").addEventListener("click", () => decide(state.shownKey, true));
    $("keychange-refuse").addEventListener("click", () => decide(state.shownKey, false));
    window.addEventListener("hashchange", showView);
    const session = await api("GET", "/api/session");
    state.me = session.identity;
    state.csrf = session.csrf;
    $("me").textContent = session.identity;
    document.title = "SixChat \u2014 " + session.identity;
    listen();
    showView();
    await loadConversations();
    await loadContacts();
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((e) => showError("Cannot reach the agent: " + e.message));
  });
})();
