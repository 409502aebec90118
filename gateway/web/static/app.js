// The console's live part: alarms arrive over server-sent events; a new critical alarm flashes a
// banner and sounds until someone looks; acknowledgements are posted without leaving the page.
(function () {
  "use strict";
  const body = document.body;
  if (!body.dataset.live) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const lang = body.dataset.lang;
  const list = document.getElementById("alarm-list");
  const words = JSON.parse((document.getElementById("words") || {}).textContent || "{}");
  let audio = null, beeping = null;

  function beep() {
    if (!audio) return;
    const o = audio.createOscillator(), g = audio.createGain();
    o.frequency.value = 880; g.gain.value = 0.3;
    o.connect(g); g.connect(audio.destination);
    o.start(); o.stop(audio.currentTime + 0.35);
  }
  function alarmSound(on) {
    if (on && !beeping) { beep(); beeping = setInterval(beep, 1500); }
    if (!on && beeping) { clearInterval(beeping); beeping = null; }
  }
  const soundBtn = document.getElementById("sound-on");
  // Browsers only allow sound after a click: offer the button until it was pressed once.
  if (soundBtn && !sessionStorage.getItem("sound")) soundBtn.hidden = false;
  function enableSound() {
    try { audio = audio || new (window.AudioContext || window.webkitAudioContext)(); } catch (e) { audio = null; }
    sessionStorage.setItem("sound", "1");
    if (soundBtn) soundBtn.hidden = true;
  }
  if (soundBtn) soundBtn.addEventListener("click", enableSound);
  if (sessionStorage.getItem("sound")) document.addEventListener("click", enableSound, { once: true });

  const banner = document.getElementById("critical-banner");
  function showCritical(a) {
    document.getElementById("critical-text").textContent = lang === "zh" ? a.message : a.message_en;
    banner.hidden = false;
    alarmSound(true);
  }
  function quiet() { banner.hidden = true; alarmSound(false); }
  banner && banner.addEventListener("click", quiet);

  function setCount(alarms) {
    const n = alarms.filter(a => a.state === "active").length;
    const badge = document.getElementById("alarm-count");
    if (badge) badge.textContent = n ? String(n) : "";
    if (!alarms.some(a => a.state === "active" && a.severity === "critical")) quiet();
  }

  function row(a) {
    const li = document.getElementById("alarm-template").content.firstElementChild.cloneNode(true);
    li.className = "alarm " + a.severity + " " + a.state;
    li.dataset.id = a.id;
    li.querySelector(".sev").textContent = words[a.severity] || a.severity;
    li.querySelector(".when").textContent = a.raised;
    li.querySelector(".state").textContent = (words[a.state] || a.state) + (a.acked_by ? " · " + a.acked_by : "");
    li.querySelector(".msg").textContent = lang === "zh" ? a.message : a.message_en;
    li.querySelector(".src").textContent = a.rule + " · " + a.source;
    const form = li.querySelector("form.ack");
    if (a.may_ack) form.action = "/alarms/" + a.id + "/ack"; else form.remove();
    const link = li.querySelector("a.order-link"), order = li.querySelector("form.order");
    if (a.order) { link.href = "/orders/" + a.order; link.textContent = (words.order_no || "#{n}").replace("{n}", a.order); }
    else link.remove();
    if (a.may_order) order.querySelector('input[name="alert_id"]').value = a.id; else order.remove();
    return li;
  }

  async function refresh(freshId) {
    const r = await fetch("/api/alarms", { headers: { Accept: "application/json" } });
    if (!r.ok) return;
    const alarms = await r.json();
    setCount(alarms);
    if (!list) return;
    // A note being typed must survive a refresh caused by some other alarm's change.
    const typed = {}, focused = document.activeElement;
    let focusId = null;
    list.querySelectorAll('input[name="note"]').forEach((input) => {
      const id = input.closest("li").dataset.id;
      if (input.value) typed[id] = input.value;
      if (input === focused) focusId = id;
    });
    list.replaceChildren(...alarms.map(row));
    list.querySelectorAll('input[name="note"]').forEach((input) => {
      const id = input.closest("li").dataset.id;
      if (typed[id]) input.value = typed[id];
      if (id === focusId) input.focus();
    });
    document.getElementById("no-alarms").hidden = alarms.length > 0;
    if (freshId) {
      const li = list.querySelector('li[data-id="' + CSS.escape(freshId) + '"]');
      if (li) li.classList.add("fresh");
    }
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.classList.contains("ack")) return;
    ev.preventDefault();
    const r = await fetch(form.action, { method: "POST", body: new FormData(form),
      headers: { "X-CSRF-Token": csrf, Accept: "application/json" } });
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      alert(e.error || r.status);
    }
    refresh();
  });

  // printable pages (the shift handover): a button, since no inline script may call print()
  document.addEventListener("click", (ev) => {
    if (ev.target.closest("[data-print]")) { ev.preventDefault(); window.print(); }
  });

  const live = document.getElementById("live-state");
  const offline = document.getElementById("offline-banner");
  function connect() {
    const es = new EventSource("/events");
    es.onopen = () => { live.classList.add("on"); offline.hidden = true; refresh(); };
    es.onerror = () => { live.classList.remove("on"); offline.hidden = false; };
    es.addEventListener("alert", (m) => {
      const a = JSON.parse(m.data);
      if (a.what === "raised" && a.severity === "critical") showCritical(a);
      refresh(a.what === "raised" ? a.id : null);
    });
  }
  connect();
})();
