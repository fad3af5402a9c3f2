// Setpoint's console: live updates and confirmation dialogs. Every page works without this file.
//
// Live updates: the page follows GET /v1/events (server-sent events, with the session's cookie) and, on each
// event, re-fetches its server-rendered part (data-fragment) into data-target. Events only say what changed
// state, so the part is also re-fetched every data-refresh-s seconds (the last reconcile time moves without an
// event), every 5 s while the stream is down (the browser reconnects it by itself, resuming after the last event
// id), and every second for data-fast-s seconds after an action.
"use strict";

(function () {
  const body = document.body;
  const status = document.getElementById("live-status");
  const say = (text) => { if (status) status.textContent = text; };

  // Confirmation dialogs: the action's link leads to a confirm page; with a <dialog>, confirm in place instead.
  // Delegated, as the actions are part of the refreshed fragment. Cancel has the focus: Enter never confirms unseen.
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[data-dialog]");
    const dialog = link && document.getElementById(link.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") return;
    event.preventDefault();
    dialog.showModal();
    const cancel = dialog.querySelector("[data-cancel]");
    if (cancel) cancel.focus();
  });

  const fragment = body.dataset.fragment;
  const target = fragment && document.getElementById(body.dataset.target);
  if (!target) return;

  let inFlight = false;
  let again = false;
  async function refresh() {
    if (inFlight || document.querySelector("dialog[open]")) { again = true; return; }  // never under an open dialog
    inFlight = true;
    try {
      const answer = await fetch(fragment, { credentials: "same-origin", headers: { Accept: "text/html" } });
      // Signed out (401) or the resource gone (404): the full page says so.
      if (answer.status === 401 || answer.status === 404) { window.location.reload(); return; }
      if (answer.ok) {
        // Keyboard users keep their place: the focused link (or element with an id) is focused again after.
        const active = document.activeElement;
        const inside = active && target.contains(active);
        const href = inside && active.getAttribute("href");
        const id = inside && active.id;
        target.innerHTML = await answer.text();
        if (inside) {
          const again = (id && document.getElementById(id)) ||
            (href && Array.from(target.querySelectorAll("a[href]")).find((a) => a.getAttribute("href") === href));
          (again || document.getElementById("main")).focus();
        }
      }
    } catch (error) {
      say("Cannot reach the server; retrying");
    } finally {
      inFlight = false;
      if (again) { again = false; setTimeout(refresh, 200); }
    }
  }

  let timer = null;
  let last = Date.now();
  function soon() {  // several events in a burst: one refresh
    if (timer !== null) return;
    const wait = Math.max(250, last + 1000 - Date.now());  // at most one refresh a second, however busy the fleet
    timer = setTimeout(() => { timer = null; last = Date.now(); refresh(); }, wait);
  }

  let streaming = false;
  if (body.dataset.events && typeof EventSource === "function") {
    const source = new EventSource(body.dataset.events, { withCredentials: true });
    source.addEventListener("open", () => { streaming = true; say("Live"); });
    source.addEventListener("error", () => { streaming = false; say("Live updates interrupted: refreshing every 5 s"); });
    (body.dataset.eventTypes || "").split(" ").filter(Boolean).forEach((type) => source.addEventListener(type, soon));
    source.addEventListener("message", soon);
  } else {
    say("Refreshing every 5 s");
  }

  const every = Number(body.dataset.refreshS || 15) * 1000;
  const fastUntil = Date.now() + Number(body.dataset.fastS || 0) * 1000;
  setInterval(() => {
    const now = Date.now();
    const period = now < fastUntil ? 1000 : streaming ? every : 5000;
    if (now - last >= period && !document.hidden) { last = now; refresh(); }
  }, 1000);
})();
