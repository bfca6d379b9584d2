// The student page: grades arrive live over the browser's own EventSource.
// The token lives in this tab's memory only; the server gets it once, in a header, and
// keeps it in an HttpOnly cookie that the stream and the other calls carry.
"use strict";

(() => {
  const PAGE_LIMIT = 500;
  const MAX_PAGES = 200;
  const RETRY_FIRST_MS = 2000;
  const RETRY_MAX_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    who: $("who"),
    studentId: $("student-id"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    unread: $("unread"),
    unreadCount: $("unread-count"),
    signin: $("signin"),
    signinMessage: $("signin-message"),
    form: $("signin-form"),
    tokenInput: $("token-input"),
    feed: $("feed"),
    feedNote: $("feed-note"),
    cards: $("cards"),
    empty: $("empty"),
    notifyButton: $("notify-button"),
    readAllButton: $("read-all-button"),
    signOutButton: $("sign-out-button"),
    announcer: $("announcer"),
  };

  const state = {
    token: null, // in memory only
    studentId: null,
    claims: null,
    source: null,
    generation: 0, // bumped on every sign-in and sign-out: late answers of older ones are dropped
    epoch: 0, // bumped when the list is reloaded after a reset
    cards: new Map(), // id -> {data, read, node, epoch}
    lastEventId: null,
    unread: 0,
    retryMs: RETRY_FIRST_MS,
    retryTimer: null,
  };

  // ---- small helpers -------------------------------------------------------------------

  /** Event ids are decimal strings that grow; compare them without losing digits. */
  function compareIds(a, b) {
    return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
  }

  function newestId(a, b) {
    if (!a) return b;
    if (!b) return a;
    return compareIds(a, b) >= 0 ? a : b;
  }

  /** The JWT's claims, unverified: the server checks the signature; the page only needs `sub`. */
  function readClaims(token) {
    const parts = token.split(".");
    if (parts.length !== 3) return null;
    try {
      let payload = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      payload += "=".repeat((4 - (payload.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch {
      return null;
    }
  }

  function tokenExpired(claims) {
    return typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function studentPath(suffix) {
    return "/notifications/" + suffix + "/" + encodeURIComponent(state.studentId);
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function announce(text) {
    ui.announcer.textContent = "";
    // A change the next frame, so that a repeated message is announced again.
    requestAnimationFrame(() => {
      ui.announcer.textContent = text;
    });
  }

  // ---- time ----------------------------------------------------------------------------

  const fullTime = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
  const dayTime = new Intl.DateTimeFormat(undefined, {
    weekday: "short",
    hour: "numeric",
    minute: "2-digit",
  });
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });

  function whenText(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 45) return "just now";
    if (seconds < 3600) return relative.format(-Math.round(seconds / 60), "minute");
    if (seconds < 6 * 3600) return relative.format(-Math.round(seconds / 3600), "hour");
    return dayTime.format(date);
  }

  function refreshTimes() {
    for (const time of ui.cards.querySelectorAll("time[datetime]")) {
      const date = new Date(time.dateTime);
      if (!Number.isNaN(date.getTime())) time.textContent = whenText(date);
    }
  }

  // ---- connection state and badge --------------------------------------------------------

  const CONNECTION_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    "signed-out": "signed out",
  };

  function setConnection(name) {
    if (ui.connection.dataset.state === name) return;
    ui.connection.dataset.state = name;
    ui.connectionText.textContent = CONNECTION_TEXT[name];
  }

  function setUnread(count) {
    state.unread = Math.max(0, Math.floor(count));
    ui.unreadCount.textContent = String(state.unread);
    ui.unread.dataset.count = String(state.unread);
    ui.unread.title = state.unread === 1 ? "1 unread grade" : state.unread + " unread grades";
    document.title = (state.unread ? "(" + state.unread + ") " : "") + "My grades · gradecast";
    ui.readAllButton.disabled = state.unread === 0 && !hasUnreadCards();
  }

  function hasUnreadCards() {
    for (const card of state.cards.values()) if (!card.read) return true;
    return false;
  }

  function countUnreadCards() {
    let count = 0;
    for (const card of state.cards.values()) if (!card.read) count += 1;
    return count;
  }

  // ---- cards ---------------------------------------------------------------------------

  function isRead(data) {
    return data.read === true || Boolean(data.readAt);
  }

  function buildCard(data, read, fresh) {
    const id = String(data.id);
    const article = make("article", "card " + (read ? "read" : "unread"));
    if (fresh) article.classList.add("fresh"); // arrived live: it slides in
    article.dataset.id = id;
    article.setAttribute("aria-labelledby", "card-title-" + id);

    const grade = make("p", "card-grade");
    grade.append(make("span", "sr-only", "Grade "), make("span", "", String(data.grade)));
    if (String(data.grade).length > 4) grade.classList.add("long");

    const body = make("div", "card-body");
    const heading = make("h3", "card-title", data.assignmentTitle || data.assignmentId);
    heading.id = "card-title-" + id;
    const meta = make("p", "card-meta");
    if (data.courseId) meta.append(make("span", "card-course", data.courseId));
    if (data.assignmentTitle && data.assignmentId) {
      meta.append(make("span", "card-assignment", data.assignmentId));
    }
    const published = new Date(data.publishedAt);
    if (!Number.isNaN(published.getTime())) {
      const time = make("time", "card-time", whenText(published));
      time.dateTime = data.publishedAt;
      time.title = fullTime.format(published);
      meta.append(time);
    }
    body.append(meta, heading);
    if (data.teacherComment) {
      body.append(make("blockquote", "card-comment", data.teacherComment));
    }

    const status = make("p", "card-status");
    const readButton = make("button", "card-read", "Mark read");
    readButton.type = "button";
    readButton.setAttribute("aria-describedby", heading.id);
    status.append(make("span", "card-new", "New"), readButton);

    article.append(grade, body, status);
    const item = make("li", "card-item");
    item.append(article);
    return item;
  }

  /** Adds a notification unless it is already shown; true when it was new. */
  function addCard(data, options) {
    if (!data || data.id === undefined || data.id === null) return false;
    const id = String(data.id);
    state.lastEventId = newestId(state.lastEventId, id);
    if (state.cards.has(id)) return false;
    const read = isRead(data) || Boolean(options.assumeRead && options.assumeRead.has(id));
    const node = buildCard(data, read, Boolean(options.live));
    state.cards.set(id, { data, read, node, epoch: state.epoch });
    if (options.batch) {
      options.batch.push([id, node]);
    } else {
      placeCard(id, node);
    }
    return true;
  }

  /** Newest first: before the first card with a smaller id. */
  function placeCard(id, node) {
    for (const item of ui.cards.children) {
      if (compareIds(item.firstChild.dataset.id, id) < 0) {
        ui.cards.insertBefore(node, item);
        return;
      }
    }
    ui.cards.append(node);
  }

  function placeBatch(batch) {
    if (!batch.length) return;
    batch.sort((a, b) => compareIds(b[0], a[0]));
    if (ui.cards.children.length) {
      for (const [id, node] of batch) placeCard(id, node);
    } else {
      const fragment = document.createDocumentFragment();
      for (const [, node] of batch) fragment.append(node);
      ui.cards.append(fragment);
    }
  }

  function updateEmpty() {
    ui.empty.hidden = state.cards.size > 0;
  }

  function showAsRead(card) {
    card.read = true;
    const article = card.node.firstChild;
    article.classList.remove("unread");
    article.classList.add("read");
  }

  function clearCards() {
    state.cards.clear();
    ui.cards.replaceChildren();
    state.lastEventId = null;
    updateEmpty();
  }

  // ---- read state ----------------------------------------------------------------------

  /** The missed list says how many are unread but not which (unless a notification carries
   * `read` or `readAt`): take the newest ones as the unread ones, as a student reading in
   * order leaves them. */
  function assumedRead(notifications, unread) {
    const known = notifications.some((data) => "read" in data || "readAt" in data);
    if (known || typeof unread !== "number") return new Set();
    const ids = notifications.map((data) => String(data.id)).sort(compareIds);
    return new Set(ids.slice(0, Math.max(0, ids.length - unread)));
  }

  async function postForUnread(path) {
    const generation = state.generation;
    try {
      const headers = { Accept: "application/json" };
      const response = await fetch(path, { method: "POST", headers });
      if (generation !== state.generation) return;
      if (response.status === 401) {
        signedOut("Signed out: your session has expired.");
        return;
      }
      if (!response.ok) return; // the change stays shown; the server's count comes later
      const body = parseJson(await response.text());
      if (body && typeof body.unread === "number") setUnread(body.unread);
    } catch {
      // Offline: the change stays shown.
    }
  }

  function markRead(id) {
    const card = state.cards.get(id);
    if (!card || card.read) return;
    showAsRead(card);
    setUnread(state.unread - 1);
    postForUnread("/notifications/" + encodeURIComponent(id) + "/read");
  }

  function markAllRead() {
    for (const card of state.cards.values()) if (!card.read) showAsRead(card);
    setUnread(0);
    postForUnread("/notifications/read-all");
    announce("All grades marked read");
  }

  // ---- browser notifications -------------------------------------------------------------

  function updateNotifyButton() {
    const supported = "Notification" in window;
    ui.notifyButton.hidden = !supported || Notification.permission !== "default";
  }

  function notify(data) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (document.visibilityState === "visible" && document.hasFocus()) return; // on screen already
    const title = (data.assignmentTitle || data.assignmentId) + ": " + String(data.grade);
    const lines = [data.courseId, data.teacherComment].filter(Boolean);
    try {
      const shown = new Notification(title, { body: lines.join("\n"), tag: "grade-" + data.id });
      shown.onclick = () => {
        window.focus();
        shown.close();
      };
    } catch {
      // Some browsers allow notifications only from a service worker; the page still shows it.
    }
  }

  // ---- what was missed -----------------------------------------------------------------

  class AuthError extends Error {
    constructor(status) {
      super("auth " + status);
      this.status = status;
    }
  }

  /** Every retained notification, oldest first, following `next` page after page. */
  async function fetchMissed() {
    const notifications = [];
    let after = null;
    let unread = null;
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const query = new URLSearchParams({ limit: String(PAGE_LIMIT) });
      if (after) query.set("after", after);
      const response = await fetch(studentPath("missed") + "?" + query, {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (response.status === 401 || response.status === 403) throw new AuthError(response.status);
      if (!response.ok) throw new Error("missed: " + response.status);
      const body = await response.json();
      notifications.push(...(body.notifications || []));
      if (typeof body.unread === "number") unread = body.unread;
      if (!body.next) break;
      after = body.next;
    }
    return { notifications, unread };
  }

  async function loadMissed() {
    const generation = state.generation;
    ui.feedNote.textContent = "Loading your grades…";
    const missed = await fetchMissed();
    if (generation !== state.generation) return false;
    const batch = [];
    const assumeRead = assumedRead(missed.notifications, missed.unread);
    for (const data of missed.notifications) addCard(data, { batch, assumeRead });
    placeBatch(batch);
    setUnread(missed.unread ?? countUnreadCards());
    ui.feedNote.textContent = "";
    updateEmpty();
    return true;
  }

  /** After `event: reset`: what is shown becomes what is retained (plus what arrived since). */
  async function reloadMissed() {
    const generation = state.generation;
    state.epoch += 1;
    const epoch = state.epoch;
    let missed;
    try {
      missed = await fetchMissed();
    } catch (error) {
      if (error instanceof AuthError) signedOut("Signed out: your session has expired.");
      return;
    }
    if (generation !== state.generation) return;
    const retained = new Set(missed.notifications.map((data) => String(data.id)));
    for (const [id, card] of state.cards) {
      if (card.epoch < epoch && !retained.has(id)) {
        card.node.remove();
        state.cards.delete(id);
      }
    }
    const batch = [];
    const assumeRead = assumedRead(missed.notifications, missed.unread);
    for (const data of missed.notifications) addCard(data, { batch, assumeRead });
    placeBatch(batch);
    setUnread(missed.unread ?? countUnreadCards());
    updateEmpty();
  }

  // ---- the stream ----------------------------------------------------------------------

  function closeStream() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    if (state.source) {
      state.source.close();
      state.source = null;
    }
  }

  function openStream() {
    closeStream();
    // From where this page already is (0: the start), so that nothing published between
    // loading the list and opening the stream, or while a first connection was down, is
    // lost. The browser's own reconnections send Last-Event-ID, which the server prefers.
    const url =
      studentPath("stream") + "?lastEventId=" + encodeURIComponent(state.lastEventId || "0");
    const source = new EventSource(url);
    state.source = source;
    if (ui.connection.dataset.state !== "reconnecting") setConnection("connecting");

    source.onopen = () => {
      if (source !== state.source) return;
      state.retryMs = RETRY_FIRST_MS;
      setConnection("live");
    };
    source.addEventListener("grade", (event) => {
      if (source !== state.source) return;
      const data = parseJson(event.data);
      if (event.lastEventId) state.lastEventId = newestId(state.lastEventId, event.lastEventId);
      if (!data || !addCard(data, { live: true })) return;
      if (!state.cards.get(String(data.id)).read) setUnread(state.unread + 1);
      updateEmpty();
      announce(
        "New grade: " + (data.assignmentTitle || data.assignmentId) + ", " + String(data.grade),
      );
      notify(data);
    });
    source.addEventListener("reset", () => {
      if (source === state.source) reloadMissed();
    });
    source.addEventListener("stats", (event) => {
      const data = parseJson(event.data);
      if (source === state.source && data && typeof data.unread === "number") {
        setUnread(data.unread);
      }
    });
    source.onerror = () => {
      if (source !== state.source) return;
      if (source.readyState === EventSource.CONNECTING) {
        setConnection("reconnecting"); // the browser tries again by itself
      } else if (source.readyState === EventSource.CLOSED) {
        state.source = null;
        streamGaveUp();
      }
    };
  }

  /** A native EventSource stops for good on an answer other than a stream (a 401 once the
   * token has expired, a 429, a 5xx): ask the server which, without guessing. */
  async function streamGaveUp() {
    const generation = state.generation;
    if (state.claims && tokenExpired(state.claims)) {
      signedOut("Signed out: your session has expired.");
      return;
    }
    setConnection("reconnecting");
    let status = 0;
    try {
      const probe = await fetch(studentPath("missed") + "?limit=1", { cache: "no-store" });
      status = probe.status;
    } catch {
      status = 0; // unreachable: try again later
    }
    if (generation !== state.generation) return;
    if (status === 401) {
      signedOut("Signed out: your session has expired.");
    } else if (status === 403) {
      signedOut("Signed out: this token belongs to another student.");
    } else {
      const wait = state.retryMs * (0.75 + Math.random() / 2);
      state.retryMs = Math.min(state.retryMs * 2, RETRY_MAX_MS);
      state.retryTimer = setTimeout(() => {
        if (generation === state.generation) openStream();
      }, wait);
    }
  }

  // ---- signing in and out --------------------------------------------------------------

  function showSignIn(message) {
    ui.signinMessage.textContent = message || "";
    ui.signinMessage.hidden = !message;
    ui.signin.hidden = false;
    ui.feed.hidden = true;
    ui.who.hidden = true;
    ui.tokenInput.value = "";
    ui.unread.hidden = true;
  }

  function signedOut(message) {
    state.generation += 1;
    closeStream();
    state.token = null;
    state.claims = null;
    setConnection("signed-out");
    showSignIn(message);
    if (message) ui.tokenInput.focus();
  }

  async function signIn(token) {
    token = token.trim().replace(/^Bearer\s+/i, "");
    const claims = readClaims(token);
    if (!claims || typeof claims.sub !== "string" || !claims.sub) {
      signedOut("That does not look like an access token. Paste it whole.");
      return;
    }
    if (tokenExpired(claims)) {
      signedOut("Signed out: that token has expired. Ask for a new one.");
      return;
    }
    state.generation += 1;
    const generation = state.generation;
    closeStream();
    state.token = token;
    state.claims = claims;
    state.studentId = claims.sub;
    state.retryMs = RETRY_FIRST_MS;
    clearCards();
    setConnection("connecting");

    let response;
    try {
      response = await fetch("/notifications/session", {
        method: "POST",
        headers: { Authorization: "Bearer " + token },
      });
    } catch {
      if (generation === state.generation) {
        signedOut("Could not reach the server. Check your connection and try again.");
      }
      return;
    }
    if (generation !== state.generation) return;
    if (!response.ok) {
      signedOut(
        response.status === 401
          ? "That token was not accepted: it may have expired. Ask for a new one."
          : "Could not sign in (error " + response.status + "). Try again in a moment.",
      );
      return;
    }

    ui.studentId.textContent = state.studentId;
    ui.who.hidden = false;
    ui.unread.hidden = false;
    ui.signin.hidden = true;
    ui.feed.hidden = false;
    setUnread(0);
    try {
      await loadMissed();
    } catch (error) {
      if (generation !== state.generation) return;
      if (error instanceof AuthError) {
        signedOut("Signed out: your session has expired.");
        return;
      }
      ui.feedNote.textContent = "Earlier grades could not be loaded; new ones will appear here.";
      updateEmpty();
    }
    if (generation === state.generation) openStream();
  }

  function signOut() {
    signedOut("You signed out.");
    clearCards();
    fetch("/notifications/session", { method: "DELETE", keepalive: true }).catch(() => {});
  }

  /** `/#token=...`: taken, then wiped from the address bar so that history does not keep it. */
  function takeTokenFromFragment() {
    if (!location.hash) return null;
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (!token) return null;
    params.delete("token");
    const rest = params.toString();
    const address = location.pathname + location.search + (rest ? "#" + rest : "");
    history.replaceState(history.state, "", address);
    return token;
  }

  // ---- wiring --------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value;
    if (!token.trim()) {
      ui.signinMessage.textContent = "Paste your access token first.";
      ui.signinMessage.hidden = false;
      ui.tokenInput.focus();
      return;
    }
    signIn(token);
  });

  ui.cards.addEventListener("click", (event) => {
    const article = event.target.closest("article.card");
    if (!article) return;
    const selecting = String(window.getSelection()).length > 0 && !event.target.closest("button");
    if (!selecting) markRead(article.dataset.id);
  });

  ui.readAllButton.addEventListener("click", markAllRead);
  ui.signOutButton.addEventListener("click", signOut);
  ui.notifyButton.addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } finally {
      updateNotifyButton();
    }
  });

  window.addEventListener("hashchange", () => {
    const token = takeTokenFromFragment();
    if (token) signIn(token);
  });
  window.addEventListener("online", () => {
    if (state.token && !state.source) openStream();
  });
  setInterval(refreshTimes, 30000);

  updateNotifyButton();
  const token = takeTokenFromFragment();
  if (token) {
    signIn(token);
  } else {
    signedOut("");
  }
})();
