// The rater's page: consent -> instructions -> trials -> the end, through the study's JSON API.
// Every decision (who may take part, which trial, whether a vote counts, where the rater goes at
// the end) is the server's; this page only shows its answers and sends the rater's.
// Plain JavaScript, no dependencies: it has to load fast on any phone a crowd worker has.
"use strict";
(() => {
  const API = "/api/study";
  const $ = (id) => document.getElementById(id);
  const params = Object.fromEntries(new URLSearchParams(location.search));
  const who = params.PROLIFIC_PID ? "prolific"
    : params.assignmentId === "ASSIGNMENT_ID_NOT_AVAILABLE" ? "preview"
    : params.workerId ? "mturk" : "anonymous";
  const platformName = {prolific: "Prolific", mturk: "Mechanical Turk"};
  const REDIRECT_DELAY_S = 4;
  const CONSENT_LABELS = [["purpose", "What this study is for"], ["duration_minutes", "How long it takes"],
    ["pay", "Payment"], ["data_stored", "What we store"], ["retention", "How long we keep it"],
    ["withdrawal", "Your right to withdraw"], ["contact", "Contact"]];
  let info = null, token = null, tokenKey = null, raterKey = null;

  // -- screens ------------------------------------------------------------------------------
  const SCREENS = ["loading", "message", "consent", "instructions", "trial", "end"];
  function show(name) {
    for (const s of SCREENS) $(s).hidden = s !== name;
    document.body.dataset.screen = name;
    $("progress").hidden = name !== "trial";
  }
  function message(title, text) {
    $("message-title").textContent = title;
    $("message-text").textContent = text;
    show("message");
  }

  // Phones (and narrow windows) get one image at a time with a Reference / A / B toggle; wide
  // screens get the three side by side. Hints follow the pointer: no keys or wheel on a phone.
  const touch = () => matchMedia("(pointer: coarse)").matches;
  const narrow = () => innerWidth < 720;

  // -- the API -------------------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }
  async function call(method, path, body) {
    const r = await fetch(API + path, {method, headers: body ? {"Content-Type": "application/json"} : {},
                                       body: body ? JSON.stringify(body) : undefined, cache: "no-store"});
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
      const err = new HttpError(r.status, typeof detail === "string" ? detail : "the request was refused");
      err.retryAfter = Number(r.headers.get("Retry-After")) || 0;
      throw err;
    }
    return r.status === 204 ? null : r.json();
  }
  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
  // Network errors, overload (429) and server errors are retried with the same request (a vote
  // names its trial, and the server stores a trial's vote once), so nothing the rater did is lost.
  async function persist(method, path, body, onWait) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call(method, path, body);
      } catch (e) {
        const transient = !(e instanceof HttpError) || e.status === 429 || e.status >= 500;
        if (!transient) throw e;
        const wait = Math.max(e.retryAfter ? e.retryAfter * 1000 : 0, Math.min(10000, 500 * 2 ** attempt));
        if (onWait) onWait(attempt);
        await sleep(wait);
      }
    }
  }

  // -- start ---------------------------------------------------------------------------------
  async function boot() {
    info = await persist("GET", "/");
    document.title = info.title;
    $("title").textContent = info.title;
    if (who === "preview") {
      return message("Preview", "This is a preview of the task. Accept the HIT to take part.");
    }
    if (!info.accepts.includes(who)) {
      return message("This link cannot start the study", info.refusals[who]);
    }
    const id = params.PROLIFIC_PID || params.workerId || "";
    const submission = params.SESSION_ID || params.assignmentId || "";
    tokenKey = `study:${info.id}:${who}:${id}:${submission}`;
    raterKey = `study:${info.id}:rater-key`;
    token = load(tokenKey);
    // A platform rater is known by the link's ids, a visitor by the key the server gave them:
    // either resumes their session. A new visitor gets a session only when they agree.
    if (who === "anonymous" && !load(raterKey)) return showConsent();
    const kept = token, state = await startSession();
    if (kept && state.token === kept && state.status === "active") {   // telemetry: the page was reloaded
      call("POST", `/sessions/${token}/events`, {kind: "reload", payload: {index: state.index}}).catch(() => {});
    }
    render(state);
  }
  function load(key) { try { return localStorage.getItem(key); } catch (e) { return null; } }
  function save(key, value) {
    try { value ? localStorage.setItem(key, value) : localStorage.removeItem(key); } catch (e) { /* private mode */ }
  }
  async function startSession() {
    const body = {params};
    if (token) body.token = token;
    if (who === "anonymous" && load(raterKey)) body.rater_key = load(raterKey);
    const state = await persist("POST", "/sessions", body);
    token = state.token;
    save(tokenKey, token);
    if (state.rater_key) save(raterKey, state.rater_key);
    return state;
  }

  function render(state) {
    if (state.status === "consent") return showConsent();
    if (state.status === "active") {
      if (state.index === 0 && !sessionStorage.getItem(`intro:${state.token}`)) return showInstructions(state);
      return showTrial(state);
    }
    showEnd(state);
  }

  // -- consent and instructions ---------------------------------------------------------------
  function showConsent() {
    const dl = $("consent-details");
    dl.replaceChildren();
    for (const [key, label] of CONSENT_LABELS) {
      const value = info.consent[key];
      if (!value) continue;
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = label;
      dd.textContent = key === "duration_minutes" ? `About ${value} minutes` : value;
      dl.append(dt, dd);
    }
    $("consent-text").textContent = info.consent_text;
    $("consent-version").textContent = `Consent version ${info.consent_version}`;
    show("consent");
  }
  async function answerConsent(agree) {
    $("agree").disabled = $("decline").disabled = true;
    try {
      if (!token) await startSession();
      render(await persist("POST", `/sessions/${token}/consent`, {agree, version: info.consent_version}));
    } catch (e) {
      message("Something went wrong", `${e.message}. Please reload the page.`);
    } finally {
      $("agree").disabled = $("decline").disabled = false;
    }
  }

  function hints(allowTie) {
    if (touch() || narrow()) {
      return "Tap Reference, A or B above the image to switch between them in place. Pinch to zoom, drag to " +
        "move around, double-tap to zoom in or out; all three images zoom together.";
    }
    return `Press 1 for A, 2 for B${allowTie ? ", 3 for can't tell" : ""}, or click the buttons. Zoom with ` +
      "+ and \u2212 (0 resets), or hold Ctrl while turning the mouse wheel; drag to move around. All images move together.";
  }
  function showInstructions(state) {
    $("instructions-text").textContent = `${info.instructions}\n${info.question}`.trim();
    $("instructions-hints").textContent = "In each trial: " + hints(info.allow_tie) +
      (info.allow_tie ? " If you really cannot see a difference, answer \u201ccan't tell\u201d." : "");
    const ex = info.example;
    $("example").hidden = !ex;
    if (ex) {
      const row = $("example").querySelector(".example-row");
      row.replaceChildren();
      const size = Math.min(1, (Math.min(innerWidth, 1240) - 40) / (3 * ex.width + 24), 200 / ex.height);
      for (const [label, src] of [["Reference", ex.reference], ["A", ex.reference], ["B", ex.damaged]]) {
        const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
        img.src = src; img.alt = label; img.width = Math.round(ex.width * size); img.height = Math.round(ex.height * size);
        cap.textContent = label;
        fig.append(cap, img);
        row.append(fig);
      }
      $("example-caption").textContent = "Example: B is clearly damaged, so here A is the one closer to the reference.";
    }
    $("begin").onclick = () => { sessionStorage.setItem(`intro:${state.token}`, "1"); showTrial(state); };
    show("instructions");
  }

  // -- a trial -------------------------------------------------------------------------------
  const view = {z: 1, x: 0, y: 0, w: 0, h: 0, scale: 1, zooms: 0, pans: 0, flips: 0};
  let trial = null, loadedAt = 0, voting = false, flicker = false, shown = "left";

  function showTrial(state) {
    trial = state.trial;
    voting = false;
    loadedAt = 0;
    $("progress-text").textContent = `Trial ${state.index + 1} of ${state.total}`;
    $("progress-fill").style.width = `${(100 * state.index) / state.total}%`;
    $("question").textContent = info.question;
    $("vote-tie").hidden = !trial.allow_tie;
    for (const b of document.querySelectorAll("#votes button")) b.disabled = true;
    $("status").textContent = "Loading the images…";
    Object.assign(view, {z: 1, x: 0, y: 0, zooms: 0, pans: 0, flips: 0});
    show("trial");
    flicker = narrow() || touch();
    document.body.classList.toggle("flicker", flicker);
    const sides = [["reference", "Reference", trial.reference], ["left", "A", trial.left], ["right", "B", trial.right]]
      .filter(([, , id]) => id);
    const stage = $("stage");
    stage.replaceChildren();
    stage.classList.remove("ready");
    stage.dataset.trial = trial.id;
    const images = [];
    const addPane = () => {
      const pane = document.createElement("div");
      pane.className = "pane";
      attachZoom(pane);
      return pane;
    };
    let single = null;
    if (flicker) {
      const fig = document.createElement("figure");
      single = addPane();
      fig.append(single);
      stage.append(fig);
    }
    for (const [side, label, id] of sides) {
      const img = document.createElement("img");
      img.alt = label;
      img.draggable = false;
      img.dataset.side = side;
      img.src = `${API}/stimuli/${id}`;
      images.push(img);
      if (flicker) {
        single.append(img);
      } else {
        const fig = document.createElement("figure"), cap = document.createElement("figcaption"), pane = addPane();
        cap.textContent = label;
        pane.append(img);
        fig.append(cap, pane);
        stage.append(fig);
      }
    }
    $("toggle").hidden = !flicker;
    $("toggle").querySelector("[data-show=reference]").hidden = !trial.reference;
    shown = trial.reference ? "reference" : "left";
    if (flicker) showSide(shown, false);
    layout();
    const id = trial.id;
    Promise.all(images.map((img) => img.decode())).then(() => {
      if (!trial || trial.id !== id) return;
      stage.classList.add("ready");
      for (const b of document.querySelectorAll("#votes button")) b.disabled = false;
      loadedAt = performance.now();
      $("status").textContent = "";
    }, () => {
      if (trial && trial.id === id) $("status").textContent = "An image did not load. Reload the page to try again.";
    });
  }

  // The largest scale <= 1 at which the images, the labels and the vote buttons fit the window.
  // Twice: the hint under the images says the scale, and its length changes the room left.
  function layout() {
    if (!trial || $("trial").hidden) return;
    const stage = $("stage");
    const n = flicker ? 1 : stage.children.length, gap = 12, caption = flicker ? 0 : 22;
    for (let pass = 0; pass < 2; pass++) {
      const below = $("tools").offsetHeight + $("votes").offsetHeight + $("status").offsetHeight + 28;
      const top = stage.getBoundingClientRect().top + scrollY;
      const availH = innerHeight - top - below - caption;
      const availW = stage.clientWidth - gap * (n - 1);
      const scale = Math.max(0.05, Math.min(1, availW / (n * trial.width), availH / trial.height));
      view.w = Math.floor(trial.width * scale);
      view.h = Math.floor(trial.height * scale);
      view.scale = scale;
      for (const pane of stage.querySelectorAll(".pane")) {
        pane.style.width = `${view.w}px`;
        pane.style.height = `${view.h}px`;
      }
      for (const img of stage.querySelectorAll("img")) { img.width = view.w; img.height = view.h; }
      const fit = scale < 0.999 ? `Scaled to ${Math.round(scale * 100)}% to fit your screen; zoom in to see every pixel. `
        : "Shown at full size. ";
      $("hint-text").textContent = fit + hints(trial.allow_tie);
    }
    clamp();
  }

  function showSide(side, count = true) {
    if (count && side !== shown) view.flips += 1;
    shown = side;
    for (const img of $("stage").querySelectorAll("img")) img.style.visibility = img.dataset.side === side ? "visible" : "hidden";
    for (const b of $("toggle").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.show === side));
  }

  // -- zoom and pan, the same for every image of the trial ---------------------------------------
  function clamp() {
    view.x = Math.min(0, Math.max(view.w - view.w * view.z, view.x));
    view.y = Math.min(0, Math.max(view.h - view.h * view.z, view.y));
    for (const img of $("stage").querySelectorAll("img")) {
      img.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.z})`;
      img.classList.toggle("pixels", view.z * (view.scale || 1) > 1.001);
    }
  }
  function zoomAt(factor, cx, cy) {
    const z = Math.min(16, Math.max(1, view.z * factor));
    view.x = cx - ((cx - view.x) * z) / view.z;
    view.y = cy - ((cy - view.y) * z) / view.z;
    view.z = z;
    view.zooms += 1;
    clamp();
  }
  function resetZoom() { view.z = 1; view.x = view.y = 0; clamp(); }
  const middle = () => [view.w / 2, view.h / 2];
  function attachZoom(pane) {
    const pointers = new Map();
    let pinch = null, lastTap = 0, lastType = "mouse";
    const local = (e) => { const r = pane.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    pane.addEventListener("pointerdown", (e) => {
      try { pane.setPointerCapture(e.pointerId); } catch (err) { /* a synthetic pointer */ }
      pointers.set(e.pointerId, local(e));
      lastType = e.pointerType;
      if (e.pointerType === "touch" && pointers.size === 1) {
        const now = performance.now();
        if (now - lastTap < 300) { const [x, y] = local(e); zoomAt(view.z > 1 ? 1 / view.z : 2, x, y); }
        lastTap = now;
      }
      pinch = null;
    });
    pane.addEventListener("pointermove", (e) => {
      if (!pointers.has(e.pointerId)) return;
      const before = pointers.get(e.pointerId), now = local(e);
      pointers.set(e.pointerId, now);
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        const dist = Math.hypot(a[0] - b[0], a[1] - b[1]);
        if (pinch) zoomAt(dist / pinch, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
        pinch = dist;
      } else if (pointers.size === 1 && view.z > 1) {
        view.x += now[0] - before[0];
        view.y += now[1] - before[1];
        clamp();
      }
    });
    const up = (e) => {
      if (pointers.delete(e.pointerId) && view.z > 1) view.pans += 1;
      if (pointers.size < 2) pinch = null;
    };
    pane.addEventListener("pointerup", up);
    pane.addEventListener("pointercancel", up);
    pane.addEventListener("dblclick", (e) => {     // a mouse's; a double tap is handled above
      if (lastType === "touch") return;
      const [x, y] = local(e);
      zoomAt(view.z > 1 ? 1 / view.z : 2, x, y);
    });
    // The wheel scrolls the page as everywhere else; it zooms only with Ctrl (a trackpad pinch
    // arrives as Ctrl + wheel).
    pane.addEventListener("wheel", (e) => {
      if (!(e.ctrlKey || e.metaKey)) return;
      e.preventDefault();
      const [x, y] = local(e);
      zoomAt(Math.exp(-e.deltaY / 300), x, y);
    }, {passive: false});
  }

  // -- votes ---------------------------------------------------------------------------------
  async function vote(choice) {
    if (!trial || voting || !loadedAt) return;     // nothing before every image has loaded
    if (choice === "tie" && !trial.allow_tie) return;
    voting = true;     // one vote per trial
    for (const b of document.querySelectorAll("#votes button")) b.disabled = true;
    const body = {trial_id: trial.id, choice, client_ms: performance.now() - loadedAt,
      client: {viewport: [innerWidth, innerHeight], dpr: devicePixelRatio, mode: flicker ? "flicker" : "side-by-side",
               scale: Math.round(view.scale * 1000) / 1000, zooms: view.zooms, pans: view.pans, flips: view.flips}};
    $("status").textContent = "Saving…";
    loadedAt = 0;
    try {
      const result = await persist("POST", `/sessions/${token}/votes`, body,
        () => { $("status").textContent = "Saving your answer… the connection is down, trying again."; });
      trial = null;
      render(result.state);
    } catch (e) {
      // Refused (the session moved on in another tab, or ended): show where it stands now.
      $("status").textContent = e.message;
      trial = null;
      try { render(await persist("GET", `/sessions/${token}`)); } catch (e2) { message("Something went wrong", `${e2.message}. Please reload the page.`); }
    }
  }

  // -- the end -------------------------------------------------------------------------------
  function showEnd(state) {
    const titles = {completed: "Thank you, you are done!", screened_out: "The study has ended",
                    declined: "No consent given"};
    $("end-title").textContent = titles[state.status] || "The study has ended";
    $("end-reason").textContent = state.reason || "";
    $("end-code").hidden = !state.code;
    $("code").textContent = state.code || "";
    const back = platformName[info.platform] || "the study's site";
    $("end-return").hidden = !state.redirect_url;
    if (state.redirect_url) {
      $("return-link").href = state.redirect_url;
      $("return-link").textContent = `Return to ${back} now`;
      $("return-note").textContent = `You will be taken back to ${back} in ${REDIRECT_DELAY_S} seconds.`;
      clearTimeout(showEnd.timer);
      showEnd.timer = setTimeout(() => location.assign(state.redirect_url), REDIRECT_DELAY_S * 1000);
    }
    // MTurk: the worker submits the assignment to MTurk itself, and only to MTurk.
    const form = $("mturk-form");
    let to = null;
    try { to = new URL(params.turkSubmitTo || ""); } catch (e) { to = null; }
    const toMturk = to && to.protocol === "https:" && to.hostname.endsWith(".mturk.com");
    form.hidden = !(who === "mturk" && toMturk && params.assignmentId && state.status === "completed");
    if (!form.hidden) {
      form.action = `${to.origin}/mturk/externalSubmit`;
      form.elements.assignmentId.value = params.assignmentId;
      form.elements.code.value = state.code || "";
    }
    // Open studies may allow another session; platform raters end here, also after a reload.
    $("again-row").hidden = !(who === "anonymous" && info.sessions_per_rater > 1 && state.status === "completed");
    show("end");
  }

  // -- wiring --------------------------------------------------------------------------------
  $("agree").onclick = () => answerConsent(true);
  $("decline").onclick = () => answerConsent(false);
  $("again").onclick = async () => {
    const done = token;
    token = null;
    try {
      const state = await startSession();
      if (state.token === done) {   // the study's limit: the last session comes back as it is
        return message("Thank you!", `You have taken part ${info.sessions_per_rater} times, as often as this study allows.`);
      }
      render(state);
    } catch (e) {
      message("Something went wrong", `${e.message}. Please reload the page.`);
    }
  };
  for (const b of document.querySelectorAll("#votes button")) b.onclick = () => vote(b.dataset.choice);
  for (const b of document.querySelectorAll("#toggle button")) b.onclick = () => showSide(b.dataset.show);
  $("zoom-in").onclick = () => zoomAt(1.5, ...middle());
  $("zoom-out").onclick = () => zoomAt(1 / 1.5, ...middle());
  $("zoom-reset").onclick = resetZoom;
  document.addEventListener("keydown", (e) => {
    if ($("trial").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    const act = {"1": () => vote("left"), ArrowLeft: () => vote("left"), "2": () => vote("right"),
                 ArrowRight: () => vote("right"), "3": () => vote("tie"),
                 "+": () => zoomAt(1.5, ...middle()), "=": () => zoomAt(1.5, ...middle()),
                 "-": () => zoomAt(1 / 1.5, ...middle()),
                 "0": resetZoom,
                 r: () => flicker && trial.reference && showSide("reference"), a: () => flicker && showSide("left"),
                 b: () => flicker && showSide("right")}[k];
    if (act && trial) { e.preventDefault(); act(); }
  });
  let resizeTimer = 0;
  addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(layout, 100); });
  boot().catch((e) => message("The study could not start", e.message));
})();
