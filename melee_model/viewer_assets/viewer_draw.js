// Rollout viewer, drawing: the stage canvas, the divergence strip, the error-against-horizon plot and
// the controller sticks. Pure functions of the data and a frame index, exposed as window.ViewerDraw.
// Coordinates are Melee's game units (y up); canvases flip y.
"use strict";
window.ViewerDraw = (function () {
  const COLOURS = ["#d1495b", "#2e86de"];
  const SERIES_COLOURS = { model: "#d1495b", copy_last: "#6c757d", constant_velocity: "#f4a261", "this rollout": "#1d2430" };
  const TRAIL = 30; // frames of trail behind each player
  const FAR = 10; // game units between true and predicted past which the gap is drawn red
  const RADIUS = 7;

  function positions(r) {
    const xs = [], ys = [];
    for (const fields of [r.true, r.pred]) {
      if (!fields) continue;
      for (const p of [0, 1]) {
        fields.x[p].forEach((v) => v !== null && xs.push(v));
        fields.y[p].forEach((v) => v !== null && ys.push(v));
      }
    }
    return { xs, ys };
  }

  // "fit": the blast zones (when the stage is known) and every position of the rollout;
  // "stage": a close-up of the stage, where players beyond it are pinned to the border.
  function viewBox(r, stage, mode) {
    if (mode === "stage" && stage) {
      return { left: stage.main[0] - 70, right: stage.main[1] + 70, top: 140, bottom: -70 };
    }
    const { xs, ys } = positions(r);
    const [left, right, top, bottom] = stage ? stage.blast : [-100, 100, 60, -60];
    const pad = 25;
    return {
      left: Math.min(left, ...xs) - pad, right: Math.max(right, ...xs) + pad,
      top: Math.max(top, ...ys) + pad, bottom: Math.min(bottom, ...ys) - pad,
    };
  }

  function transform(canvas, box) {
    const scale = Math.min(canvas.width / (box.right - box.left), canvas.height / (box.top - box.bottom));
    const ox = (canvas.width - scale * (box.right - box.left)) / 2, oy = (canvas.height - scale * (box.top - box.bottom)) / 2;
    const clamp = (v, hi) => Math.max(RADIUS + 1, Math.min(hi - RADIUS - 1, v));
    return {
      scale,
      x: (x) => ox + (x - box.left) * scale,
      y: (y) => oy + (box.top - y) * scale,
      // A point on the canvas, pinned inside it, and whether it had to be pinned.
      point(x, y) {
        const px = this.x(x), py = this.y(y) - RADIUS;
        const cx = clamp(px, canvas.width), cy = clamp(py, canvas.height);
        return { x: cx, y: cy, pinned: cx !== px || cy !== py };
      },
    };
  }

  function drawStage(ctx, t, stage) {
    if (!stage) return;
    const [left, right, top, bottom] = stage.blast;
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#9aa1ad";
    ctx.strokeRect(t.x(left), t.y(top), (right - left) * t.scale, (top - bottom) * t.scale);
    ctx.setLineDash([]);
    const [mainLeft, mainRight] = stage.main;
    ctx.fillStyle = "#3d4451";
    ctx.fillRect(t.x(mainLeft), t.y(0), (mainRight - mainLeft) * t.scale, 12 * t.scale);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#3d4451";
    for (const [pl, pr, height] of stage.platforms) {
      ctx.beginPath();
      ctx.moveTo(t.x(pl), t.y(height));
      ctx.lineTo(t.x(pr), t.y(height));
      ctx.stroke();
    }
    ctx.lineWidth = 1;
  }

  function trail(ctx, t, fields, p, frame, dashed) {
    const first = Math.max(0, frame - TRAIL);
    ctx.setLineDash(dashed ? [4, 3] : []);
    ctx.beginPath();
    for (let i = first; i <= frame; i++) {
      const at = t.point(fields.x[p][i], fields.y[p][i]);
      if (i === first) ctx.moveTo(at.x, at.y); else ctx.lineTo(at.x, at.y);
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // A player: a disc (true) or ring (predicted) with a wedge on the side it faces; a square when pinned.
  function marker(ctx, at, facingRight, filled) {
    const facing = facingRight ? 1 : -1;
    ctx.beginPath();
    if (at.pinned) ctx.rect(at.x - RADIUS, at.y - RADIUS, 2 * RADIUS, 2 * RADIUS);
    else ctx.arc(at.x, at.y, RADIUS, 0, 2 * Math.PI);
    if (filled) ctx.fill(); else { ctx.lineWidth = 2; ctx.stroke(); ctx.lineWidth = 1; }
    ctx.beginPath();
    ctx.moveTo(at.x + facing * RADIUS, at.y - 5);
    ctx.lineTo(at.x + facing * (RADIUS + 8), at.y);
    ctx.lineTo(at.x + facing * RADIUS, at.y + 5);
    if (filled) ctx.fill(); else ctx.stroke();
  }

  function stageView(canvas, data, r, i, mode) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const stage = data.stages[String(r.stage)];
    const t = transform(canvas, viewBox(r, stage, mode));
    drawStage(ctx, t, stage);
    ctx.font = "12px system-ui, sans-serif";
    for (const p of [0, 1]) {
      const truth = t.point(r.true.x[p][i], r.true.y[p][i]);
      ctx.strokeStyle = ctx.fillStyle = COLOURS[p];
      ctx.globalAlpha = 0.45;
      trail(ctx, t, r.true, p, i, false);
      if (r.pred) trail(ctx, t, r.pred, p, i, true);
      ctx.globalAlpha = 1;
      if (r.pred) {
        const guess = t.point(r.pred.x[p][i], r.pred.y[p][i]);
        const gap = Math.hypot(r.pred.x[p][i] - r.true.x[p][i], r.pred.y[p][i] - r.true.y[p][i]);
        ctx.strokeStyle = gap > FAR ? "#e63946" : "#9aa1ad";
        ctx.beginPath(); ctx.moveTo(truth.x, truth.y); ctx.lineTo(guess.x, guess.y); ctx.stroke();
        ctx.strokeStyle = COLOURS[p];
        marker(ctx, guess, r.pred.facing[p][i] >= 0.5, false);
      }
      marker(ctx, truth, r.true.facing[p][i] >= 0.5, true);
      // p0's label to the left of its marker, p1's to the right, so that they stay apart when the players meet.
      const label = `p${p} ${r.character_names[p]}`;
      ctx.fillText(label, p === 0 ? truth.x - RADIUS - 6 - ctx.measureText(label).width : truth.x + RADIUS + 12, truth.y - 10);
    }
  }

  // Per frame, p0 above p1: green where the predicted action is right, red where wrong;
  // for a bare replay, a grey tick where the action changes. A bar marks the current frame.
  function timeline(canvas, r, frame) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const width = canvas.width / r.frames;
    for (const p of [0, 1]) {
      const actions = r.true.action[p];
      for (let i = 0; i < r.frames; i++) {
        if (r.pred) ctx.fillStyle = r.pred.action[p][i] === actions[i] ? "#a7d7a9" : "#e63946";
        else ctx.fillStyle = i > 0 && actions[i] !== actions[i - 1] ? "#6b7380" : "#e9ecef";
        ctx.fillRect(i * width, 2 + p * 12, Math.max(width, 1), 10);
      }
    }
    ctx.fillStyle = "#1d2430";
    ctx.fillRect(frame * width, 0, Math.max(width, 2), canvas.height);
  }

  // This rollout's own per-frame errors, as the metrics define them: mean |dx|, |dy| over the
  // players, and the fraction of players whose action is right.
  function ownCurves(r) {
    const pos = [], match = [];
    for (let i = 0; i < r.frames; i++) {
      let error = 0, right = 0;
      for (const p of [0, 1]) {
        error += Math.abs(r.pred.x[p][i] - r.true.x[p][i]) + Math.abs(r.pred.y[p][i] - r.true.y[p][i]);
        right += r.pred.action[p][i] === r.true.action[p][i] ? 1 : 0;
      }
      pos.push(error / 4);
      match.push(right / 2);
    }
    return { pos_error: pos, action_match: match };
  }

  function panel(ctx, area, metric, series, frame) {
    const values = Object.values(series).flat().filter((v) => v !== null && Number.isFinite(v));
    const top = metric === "action_match" ? 1 : Math.max(1e-6, ...values) * 1.05;
    const length = Math.max(...Object.values(series).map((s) => s.length));
    const x = (i) => area.x + 44 + (i / Math.max(1, length - 1)) * (area.w - 54);
    const y = (v) => area.y + area.h - 24 - (v / top) * (area.h - 44);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#1d2430";
    ctx.fillText(metric === "action_match" ? "action match (fraction of players)" : "position error (game units)", area.x + 44, area.y + 12);
    ctx.fillText("frames predicted", area.x + area.w / 2, area.y + area.h - 2);
    ctx.strokeStyle = "#e1e4e8";
    for (let k = 0; k <= 4; k++) {
      const v = (top * k) / 4;
      ctx.beginPath(); ctx.moveTo(x(0), y(v)); ctx.lineTo(x(length - 1), y(v)); ctx.stroke();
      ctx.fillText(top < 10 ? v.toFixed(2) : v.toFixed(0), area.x, y(v) + 4);
      const i = Math.round(((length - 1) * k) / 4);
      ctx.fillText(String(i + 1), x(i) - 6, area.y + area.h - 12);
    }
    Object.entries(series).forEach(([name, points], n) => {
      ctx.strokeStyle = ctx.fillStyle = SERIES_COLOURS[name] || "#8e44ad";
      ctx.lineWidth = name === "this rollout" ? 1 : 2;
      ctx.beginPath();
      points.forEach((v, i) => (i === 0 ? ctx.moveTo(x(i), y(v)) : ctx.lineTo(x(i), y(v))));
      ctx.stroke();
      ctx.fillText(name, area.x + area.w - 130, area.y + 28 + 14 * n);
    });
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#1d2430";
    ctx.beginPath(); ctx.moveTo(x(frame), area.y + 16); ctx.lineTo(x(frame), area.y + area.h - 24); ctx.stroke();
  }

  // The evaluation's curves (model, baselines) with this rollout's own, and the current frame marked.
  function curves(canvas, all, r, frame) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const own = r.pred ? ownCurves(r) : null;
    const half = canvas.width / 2;
    ["pos_error", "action_match"].forEach((metric, k) => {
      const series = Object.assign({}, all ? all[metric] : {});
      if (own) series["this rollout"] = own[metric];
      if (Object.keys(series).length) panel(ctx, { x: k * half + 4, y: 4, w: half - 12, h: canvas.height - 8 }, metric, series, frame);
    });
  }

  // Main stick (dark) and C stick (yellow) in their gates, the analog shoulder as a bar.
  function sticks(canvas, controls, p, i) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const both = [["#1d2430", controls.main_x[p][i], controls.main_y[p][i], 38], ["#e9b949", controls.c_x[p][i], controls.c_y[p][i], 114]];
    for (const [colour, sx, sy, cx] of both) {
      ctx.strokeStyle = "#c4c9d2";
      ctx.beginPath(); ctx.arc(cx, 38, 30, 0, 2 * Math.PI); ctx.stroke();
      ctx.fillStyle = colour;
      ctx.beginPath(); ctx.arc(cx + sx * 30, 38 - sy * 30, 6, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.strokeStyle = "#c4c9d2";
    ctx.strokeRect(164, 8, 16, 60);
    ctx.fillStyle = "#1d2430";
    const pressed = Math.max(0, Math.min(1, controls.shoulder[p][i])) * 60;
    ctx.fillRect(164, 68 - pressed, 16, pressed);
  }

  return { COLOURS, FAR, stageView, timeline, curves, sticks };
})();
