// Rollout viewer: plays the rollouts in #viewer-data (written by melee_model/viewer.py) at 60 fps:
// picker, transport (play/pause, step, scrub, speed) and the per-player panels. Drawing is in
// viewer_draw.js. window.viewer exposes goto/step/select/play/pause and the data, for tests.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("viewer-data").textContent);
  const DRAW = window.ViewerDraw;
  const FPS = 60;
  const $ = (id) => document.getElementById(id);
  const state = { rollout: 0, frame: 0, playing: false, speed: 1, view: "fit", clock: null, carry: 0, loop: 0 };
  const cells = [{}, {}]; // per player: field -> element

  const rollout = () => DATA.rollouts[state.rollout];
  const fixed = (v, digits) => (v === null || v === undefined ? "–" : v.toFixed(digits));
  const actionName = (r, p, id) => (id === null ? "–" : r.action_names[p][String(id)] || String(id));

  function buildPlayers() {
    const template = $("player-template");
    for (const p of [0, 1]) {
      const panel = template.content.firstElementChild.cloneNode(true);
      panel.id = `p${p}-panel`;
      panel.style.setProperty("--colour", DRAW.COLOURS[p]);
      for (const el of panel.querySelectorAll("[data-field]")) {
        el.id = `p${p}-${el.dataset.field}`;
        cells[p][el.dataset.field] = el;
      }
      cells[p].name = panel.querySelector(".name");
      cells[p].sticks = panel.querySelector(".sticks");
      for (const name of DATA.buttons) {
        const chip = document.createElement("span");
        chip.textContent = name.replace("D_UP", "D↑");
        cells[p].buttons.appendChild(chip);
      }
      $("players").appendChild(panel);
    }
  }

  function buildPicker() {
    DATA.rollouts.forEach((r, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = `${i + 1}. ${r.title}`;
      $("rollout").appendChild(option);
    });
  }

  // ---------------------------------------------------------------- side panels

  function setCell(el, text, diverges) {
    el.textContent = text;
    el.closest("td").classList.toggle("diverge", diverges);
  }

  function updatePanels() {
    const r = rollout(), i = state.frame;
    for (const p of [0, 1]) {
      const c = cells[p], t = r.true, q = r.pred;
      c.name.textContent = `p${p} · ${r.character_names[p]}`;
      setCell(c["true-action"], actionName(r, p, t.action[p][i]), false);
      setCell(c["true-x"], fixed(t.x[p][i], 2), false);
      setCell(c["true-y"], fixed(t.y[p][i], 2), false);
      setCell(c["true-percent"], fixed(t.percent[p][i], 1) + "%", false);
      setCell(c["true-stocks"], String(Math.round(t.stocks[p][i])), false);
      setCell(c["true-on_ground"], t.on_ground[p][i] ? "yes" : "no", false);
      setCell(c["true-facing"], t.facing[p][i] ? "right" : "left", false);
      if (q) {
        const gap = Math.hypot(q.x[p][i] - t.x[p][i], q.y[p][i] - t.y[p][i]);
        setCell(c["pred-action"], actionName(r, p, q.action[p][i]), q.action[p][i] !== t.action[p][i]);
        setCell(c["pred-x"], fixed(q.x[p][i], 2), gap > DRAW.FAR);
        setCell(c["pred-y"], fixed(q.y[p][i], 2), gap > DRAW.FAR);
        setCell(c["pred-percent"], fixed(q.percent[p][i], 1) + "%", Math.abs(q.percent[p][i] - t.percent[p][i]) >= 1);
        setCell(c["pred-stocks"], String(Math.round(q.stocks[p][i])), Math.round(q.stocks[p][i]) !== Math.round(t.stocks[p][i]));
        setCell(c["pred-on_ground"], q.on_ground[p][i] ? "yes" : "no", q.on_ground[p][i] !== t.on_ground[p][i]);
        setCell(c["pred-facing"], q.facing[p][i] ? "right" : "left", q.facing[p][i] !== t.facing[p][i]);
      }
      const k = r.controls;
      c.main.textContent = `(${fixed(k.main_x[p][i], 2)}, ${fixed(k.main_y[p][i], 2)})`;
      c.c.textContent = `(${fixed(k.c_x[p][i], 2)}, ${fixed(k.c_y[p][i], 2)})`;
      c.shoulder.textContent = fixed(k.shoulder[p][i], 2);
      const mask = k.buttons[p][i];
      c.buttons.dataset.pressed = DATA.buttons.filter((_, b) => (mask >> b) & 1).join(" ");
      c.buttons.querySelectorAll("span").forEach((chip, b) => chip.classList.toggle("on", ((mask >> b) & 1) === 1));
      DRAW.sticks(c.sticks, k, p, i);
    }
  }

  // ---------------------------------------------------------------- transport

  function render() {
    const r = rollout();
    $("frame-counter").textContent = String(state.frame);
    $("frame-counter").dataset.frame = String(state.frame);
    $("game-frame").textContent = String(r.t0 + state.frame);
    $("scrub").value = String(state.frame);
    DRAW.stageView($("stage"), DATA, r, state.frame, state.view);
    DRAW.timeline($("timeline"), r, state.frame);
    document.body.classList.toggle("no-curves", !DATA.curves && !r.pred);
    DRAW.curves($("curves"), DATA.curves, r, state.frame);
    updatePanels();
  }

  function goto(frame) {
    state.frame = Math.max(0, Math.min(rollout().frames - 1, Math.round(frame)));
    render();
  }

  function select(index) {
    state.rollout = Math.max(0, Math.min(DATA.rollouts.length - 1, index));
    const r = rollout();
    $("rollout").value = String(state.rollout);
    $("scrub").max = String(r.frames - 1);
    $("frame-last").textContent = String(r.frames - 1);
    $("rollout-info").textContent = `${r.source} · game ${r.game} from frame ${r.t0} · ${r.stage_name} · ${r.character_names.join(" vs ")}${r.pred ? "" : " · replay only"}`;
    document.body.classList.toggle("bare", !r.pred);
    goto(0);
  }

  // One animation loop at a time: a loop started before a pause ends when it sees a newer one.
  function tick(now, loop) {
    if (!state.playing || loop !== state.loop) return;
    if (state.clock !== null) state.carry += ((now - state.clock) / 1000) * FPS * state.speed;
    state.clock = now;
    const advance = Math.floor(state.carry);
    if (advance > 0) {
      state.carry -= advance;
      goto(state.frame + advance);
      if (state.frame >= rollout().frames - 1) return pause();
    }
    requestAnimationFrame((next) => tick(next, loop));
  }

  function play() {
    if (state.frame >= rollout().frames - 1) goto(0);
    state.playing = true;
    state.clock = null;
    state.carry = 0;
    $("play").textContent = "pause";
    const loop = ++state.loop;
    requestAnimationFrame((now) => tick(now, loop));
  }

  function pause() {
    state.playing = false;
    $("play").textContent = "play";
  }

  function wire() {
    $("play").addEventListener("click", () => (state.playing ? pause() : play()));
    $("step").addEventListener("click", () => { pause(); goto(state.frame + 1); });
    $("back").addEventListener("click", () => { pause(); goto(state.frame - 1); });
    $("scrub").addEventListener("input", (e) => goto(Number(e.target.value)));
    $("speed").addEventListener("change", (e) => { state.speed = Number(e.target.value); });
    $("view").addEventListener("change", (e) => { state.view = e.target.value; render(); });
    $("rollout").addEventListener("change", (e) => { pause(); select(Number(e.target.value)); });
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
      if (e.key === " ") { e.preventDefault(); state.playing ? pause() : play(); }
      if (e.key === "ArrowRight") { pause(); goto(state.frame + 1); }
      if (e.key === "ArrowLeft") { pause(); goto(state.frame - 1); }
    });
  }

  $("title").textContent = DATA.title;
  buildPlayers();
  buildPicker();
  wire();
  select(0);
  window.viewer = {
    goto, select, play, pause,
    step: (n = 1) => goto(state.frame + n),
    get frame() { return state.frame; },
    get rollout() { return state.rollout; },
    data: DATA,
  };
})();
