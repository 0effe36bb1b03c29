// The mlgw console: one page over the gateway's REST admin API. The
// session cookie (HttpOnly) authenticates every call; changes carry the
// CSRF value /console/session hands out. Elements are built with the DOM
// API, never from HTML strings, so no server text can become markup.

let me = null;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, body) {
  const init = { credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.headers['X-CSRF-Token'] = me ? me.csrf : '';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!r.ok) {
    throw new ApiError(r.status, data.code || String(r.status), data.message || r.statusText);
  }
  return data;
}

// h('td', {class: 'num'}, 'text', child, …): an element; strings become text.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(headers, rows, attrs) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: x.num ? 'num' : null }, x.label || x)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'Nothing yet.'))));
}

function say(text, kind) {
  const s = document.getElementById('status');
  s.replaceChildren(text ? h('p', { class: kind || 'ok' }, text) : '');
}

function when(v) {
  if (v === null || v === undefined) return '–';
  const d = typeof v === 'number' ? new Date(v) : new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function duration(s) {
  if (s === null || s === undefined) return '–';
  const units = [['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
  for (const [u, n] of units) if (s >= n && s % n === 0) return `${s / n}${u}`;
  return `${s}s`;
}

function num(v, digits = 3) {
  return v === null || v === undefined ? '–' : Number(v).toFixed(digits);
}

// Asks for confirmation and a reason; resolves to the reason or null.
function confirmAction(text) {
  const dialog = document.getElementById('confirm');
  const reason = document.getElementById('confirm-reason');
  document.getElementById('confirm-text').textContent = text;
  reason.value = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'yes' ? reason.value.trim() : null);
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    reason.focus();
  });
}

async function act(text, path, body, after) {
  const reason = await confirmAction(text);
  if (reason === null) {
    say('Cancelled.', 'muted');
    return;
  }
  try {
    await api(path, { ...body, reason });
    say(`Done: ${text}`, 'ok');
  } catch (e) {
    say(`Refused (${e.status} ${e.code}): ${e.message}`, 'error');
  }
  await after();
}

// ---------------------------------------------------------------- models

function roles(t) {
  const parts = [h('span', {}, 'stable ', h('b', {}, t.stable))];
  if (t.canary) parts.push(h('span', {}, ' · canary ', h('b', {}, t.canary.version), ` at ${t.canary.percent}%`));
  if (t.shadows.length) parts.push(h('span', {}, ` · shadows ${t.shadows.join(', ')}`));
  if (t.pilots.length) parts.push(h('span', {}, ` · pilots ${t.pilots.map((p) => `${p.version} (${p.groups.join(', ')})`).join('; ')}`));
  return parts;
}

async function modelsPage(main) {
  const { models } = await api('/v1/admin/models');
  main.replaceChildren(
    h('h1', {}, 'Models'),
    table(['Model', 'Routing', 'Revision', 'Last change'], models.map((m) => {
      const last = m.history[m.history.length - 1];
      return h('tr', {},
        h('td', {}, h('a', { href: `#/models/${encodeURIComponent(m.model)}` }, m.model)),
        h('td', {}, roles(m.current)),
        h('td', { class: 'num' }, m.revision),
        h('td', {}, last ? `${last.what} — ${last.by}, ${when(last.at_ms)}` : '–'));
    }), { id: 'models' }));
}

function reportTable(report) {
  const rows = report.shadows.map((s) => h('tr', {},
    h('td', {}, s.version),
    h('td', { class: 'num' }, s.shadow_records),
    h('td', { class: 'num' }, s.pairs),
    h('td', { class: 'num' }, s.label_agreement === null ? '–' : `${(100 * s.label_agreement).toFixed(1)}%`),
    h('td', { class: 'num' }, num(s.mean_abs_score_diff, 4)),
    h('td', { class: 'num' }, num(s.p99_abs_score_diff, 4)),
    h('td', { class: 'num' }, num(s.max_abs_score_diff, 4)),
    h('td', { class: 'num' }, s.shadow_model_ms ? `${num(s.shadow_model_ms[0], 2)} / ${num(s.shadow_model_ms[1], 2)}` : '–'),
    h('td', { class: 'num' }, s.primary_model_ms ? `${num(s.primary_model_ms[0], 2)} / ${num(s.primary_model_ms[1], 2)}` : '–')));
  return table([
    'Shadow', { label: 'Records', num: true }, { label: 'Pairs', num: true }, { label: 'Label agreement', num: true },
    { label: 'Mean |Δscore|', num: true }, { label: 'p99 |Δscore|', num: true }, { label: 'Max |Δscore|', num: true },
    { label: 'Shadow ms p50 / p99', num: true }, { label: 'Primary ms p50 / p99', num: true },
  ], rows, { id: 'shadow-report' });
}

function routingActions(model, current, reload) {
  const path = `/v1/admin/models/${encodeURIComponent(model)}/routing`;
  const percent = h('input', { id: 'canary-percent', type: 'number', min: '0.01', max: '100', step: '0.01', value: current.canary ? current.canary.percent : 10 });
  const version = h('input', { id: 'canary-version', type: 'text', size: 6, value: current.canary ? current.canary.version : '' });
  const setShare = () => {
    const p = Number(percent.value);
    const v = version.value.trim();
    if (current.canary && (v === '' || v === current.canary.version)) {
      return act(`Set the canary share of ${model} to ${p}%`, path, { action: 'set_canary_percent', percent: p }, reload);
    }
    return act(`Make version ${v} the canary of ${model} at ${p}%`, path, { action: 'set_canary', version: v, percent: p }, reload);
  };
  return h('section', { class: 'actions', 'aria-label': 'Routing actions' },
    h('div', { class: 'field' }, h('label', { for: 'canary-version' }, 'Canary version'), version),
    h('div', { class: 'field' }, h('label', { for: 'canary-percent' }, 'Canary share (%)'), percent),
    h('button', { class: 'primary', id: 'set-canary', onclick: setShare }, 'Apply canary share'),
    current.canary ? h('button', { id: 'promote', onclick: () => act(`Promote version ${current.canary.version} of ${model} to stable`, path, { action: 'promote' }, reload) }, 'Promote canary') : null,
    current.canary ? h('button', { id: 'remove-canary', onclick: () => act(`Stop the canary of ${model}`, path, { action: 'remove_canary' }, reload) }, 'Stop canary') : null,
    h('button', { class: 'danger', id: 'rollback', onclick: () => act(`Roll ${model} back to the routing before its last change`, path, { action: 'rollback' }, reload) }, 'Roll back last change'));
}

async function modelPage(main, model) {
  const reload = () => modelPage(main, model);
  const enc = encodeURIComponent(model);
  const [view, report] = await Promise.all([
    api(`/v1/admin/models/${enc}/routing?history_limit=20`),
    api(`/v1/admin/models/${enc}/shadow-report?window_s=3600`).catch((e) => ({ error: e })),
  ]);
  const t = view.current;
  main.replaceChildren(
    h('h1', {}, `Model ${model}`),
    h('dl', { class: 'facts', id: 'routing' },
      h('dt', {}, 'Stable'), h('dd', { id: 'stable' }, t.stable),
      h('dt', {}, 'Canary'), h('dd', { id: 'canary' }, t.canary ? `${t.canary.version} at ${t.canary.percent}% of callers` : 'none'),
      h('dt', {}, 'Shadows'), h('dd', {}, t.shadows.length ? t.shadows.join(', ') : 'none'),
      h('dt', {}, 'Pilots'), h('dd', {}, t.pilots.length ? t.pilots.map((p) => `${p.version} for ${p.groups.join(', ')}${p.auto ? '' : ' (on request)'}`).join('; ') : 'none'),
      h('dt', {}, 'Sticky by'), h('dd', {}, t.sticky_by),
      h('dt', {}, 'Revision'), h('dd', {}, `${view.revision} (this gateway serves ${view.served_revision})`)),
    me.may_change ? routingActions(model, t, reload) : h('p', { class: 'muted', id: 'read-only' }, 'You can look but not change: changes need the admin role.'),
    h('h2', {}, 'Shadow versions against the primary, last hour'),
    report.error ? h('p', { class: 'error' }, report.error.message) : reportTable(report),
    h('h2', {}, 'Changes'),
    table(['Revision', 'When', 'By', 'What', 'Reason'], view.history.slice().reverse().map((c) => h('tr', {},
      h('td', { class: 'num' }, c.revision), h('td', {}, when(c.at_ms)), h('td', {}, c.by), h('td', {}, c.what), h('td', {}, c.reason || '–'))), { id: 'history' }));
}

// ---------------------------------------------------------------- jobs

async function jobsPage(main) {
  const { jobs } = await api('/v1/admin/tuner/jobs');
  main.replaceChildren(
    h('h1', {}, 'Refresh jobs'),
    table(['Job', 'View', { label: 'Interval', num: true }, 'Pinned', 'Metric', 'Last window', 'Last run', 'Next run'], jobs.map((j) => h('tr', {},
      h('td', {}, h('a', { href: `#/jobs/${encodeURIComponent(j.job)}` }, j.job)),
      h('td', {}, j.view),
      h('td', { class: 'num' }, duration(j.interval_s)),
      h('td', {}, j.pin ? h('span', { class: 'pill warn' }, `pinned ${duration(j.pin.interval_s)}`) : 'no'),
      h('td', {}, j.metric ? `${j.metric.name} ≥ ${j.metric.threshold}` : '–'),
      h('td', {}, j.last_window ? `${j.last_window.action} (${num(j.last_window.metric)})` : '–'),
      h('td', {}, j.last_run ? `${j.last_run.outcome} ${when(j.last_run.finished_at)}` : '–'),
      h('td', {}, when(j.next_run)))), { id: 'jobs' }));
}

// The tuner's plot: the interval in force (a step line, log scale, left)
// and each judged window's metric against the threshold (right).
function plot(job) {
  const W = 900; const H = 300; const L = 60; const R = 60; const T = 20; const B = 40;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('class', 'plot');
  svg.setAttribute('role', 'img');
  svg.setAttribute('id', 'tuner-plot');
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const decisions = job.decisions || [];
  const title = el('title', {}, `Interval and ${job.metric ? job.metric.name : 'metric'} of ${job.job} over time`);
  title.id = 'tuner-plot-title';
  if (!decisions.length) {
    el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No decision yet: the tuner has not judged a window.');
    return svg;
  }
  const times = decisions.map((d) => new Date(d.at).getTime());
  const t0 = Math.min(...times); const t1 = Math.max(Math.max(...times), Date.now());
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const intervals = decisions.flatMap((d) => [d.from_s, d.to_s]).concat([job.interval_s]).filter((v) => v > 0);
  const lo = Math.log(Math.min(...intervals) / 1.5); const hi = Math.log(Math.max(...intervals) * 1.5);
  const yI = (s) => T + (1 - (Math.log(s) - lo) / Math.max(1e-9, hi - lo)) * (H - T - B);
  const metrics = decisions.map((d) => d.metric).filter((m) => m !== null && m !== undefined);
  const threshold = job.metric ? job.metric.threshold : null;
  const mv = metrics.concat(threshold === null ? [] : [threshold]);
  const mlo = Math.min(...mv, 1) - 0.02; const mhi = Math.max(...mv, 0) + 0.02;
  const yM = (m) => T + (1 - (m - mlo) / Math.max(1e-9, mhi - mlo)) * (H - T - B);
  el('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#d0d7de' });
  let path = `M ${x(times[0])} ${yI(decisions[0].from_s)}`;
  decisions.forEach((d, i) => { path += ` L ${x(times[i])} ${yI(d.from_s)} L ${x(times[i])} ${yI(d.to_s)}`; });
  path += ` L ${x(t1)} ${yI(job.interval_s)}`;
  el('path', { d: path, fill: 'none', stroke: '#0b57d0', 'stroke-width': 2 });
  for (const s of [...new Set(intervals)].sort((a, b) => a - b)) {
    el('text', { x: L - 6, y: yI(s) + 4, 'text-anchor': 'end' }, duration(s));
  }
  if (threshold !== null) {
    el('line', { x1: L, y1: yM(threshold), x2: W - R, y2: yM(threshold), stroke: '#b3261e', 'stroke-dasharray': '5 4' });
    el('text', { x: W - R + 6, y: yM(threshold) + 4 }, `${threshold} min`);
  }
  decisions.forEach((d, i) => {
    if (d.metric === null || d.metric === undefined) return;
    el('circle', { cx: x(times[i]), cy: yM(d.metric), r: 3.5, fill: d.metric >= (threshold ?? -Infinity) ? '#1a7f37' : '#b3261e' });
  });
  el('text', { x: L, y: H - 12 }, when(t0));
  el('text', { x: W - R, y: H - 12, 'text-anchor': 'end' }, when(t1));
  el('text', { x: L, y: 12 }, 'interval (line, log scale)');
  el('text', { x: W - R, y: 12, 'text-anchor': 'end' }, `${job.metric ? job.metric.name : 'metric'} (dots) and threshold`);
  return svg;
}

function jobActions(job, reload) {
  const path = `/v1/admin/tuner/jobs/${encodeURIComponent(job.job)}`;
  const interval = h('input', { id: 'pin-interval', type: 'text', size: 6, value: duration(job.interval_s), 'aria-describedby': 'pin-help' });
  return h('section', { class: 'actions', 'aria-label': 'Job actions' },
    h('div', { class: 'field' }, h('label', { for: 'pin-interval' }, 'Interval'), interval,
      h('span', { id: 'pin-help', class: 'muted' }, 'e.g. 30min, 4h, 1d')),
    h('button', { class: 'primary', id: 'pin', onclick: () => act(`Pin ${job.job} at ${interval.value}`, `${path}/pin`, { interval: interval.value.trim() }, reload) }, 'Pin interval'),
    job.pin ? h('button', { id: 'unpin', onclick: () => act(`Unpin ${job.job} (the tuner decides again)`, `${path}/unpin`, {}, reload) }, 'Unpin') : null,
    h('button', { id: 'run-now', onclick: () => act(`Run ${job.job} now`, `${path}/run`, {}, reload) }, 'Run now'));
}

async function jobPage(main, name) {
  const reload = () => jobPage(main, name);
  const job = await api(`/v1/admin/tuner/jobs/${encodeURIComponent(name)}`);
  main.replaceChildren(
    h('h1', {}, `Refresh job ${job.job}`),
    h('dl', { class: 'facts', id: 'job' },
      h('dt', {}, 'View'), h('dd', {}, job.view),
      h('dt', {}, 'Interval'), h('dd', { id: 'interval' }, duration(job.interval_s)),
      h('dt', {}, 'Pinned'), h('dd', { id: 'pinned' }, job.pin ? `at ${duration(job.pin.interval_s)} by ${job.pin.by} (${job.pin.reason || 'no reason'})` : 'no'),
      h('dt', {}, 'Metric'), h('dd', {}, job.metric ? `${job.metric.name} ≥ ${job.metric.threshold}` : 'none declared'),
      h('dt', {}, 'Next run'), h('dd', {}, when(job.next_run)),
      h('dt', {}, 'Last batch'), h('dd', {}, job.last_batch ? `${job.last_batch.batch_id} ${job.last_batch.status}, ${job.last_batch.rows_written} rows (${job.last_batch.rows_rejected} rejected), ${when(job.last_batch.ingested_at)}` : '–')),
    me.may_change ? jobActions(job, reload) : h('p', { class: 'muted', id: 'read-only' }, 'You can look but not change: changes need the admin role.'),
    h('h2', {}, 'Interval and metric over time'),
    plot(job),
    h('h2', {}, 'Decisions'),
    table(['Judged', 'Action', 'From → to', { label: 'Metric', num: true }, { label: 'Samples', num: true }, 'Evidence', 'Reason'],
      (job.decisions || []).slice().reverse().map((d) => h('tr', {},
        h('td', {}, when(d.at)), h('td', {}, d.action), h('td', {}, `${duration(d.from_s)} → ${duration(d.to_s)}`),
        h('td', { class: 'num' }, num(d.metric)), h('td', { class: 'num' }, d.samples), h('td', {}, d.basis || '–'), h('td', {}, d.reason))), { id: 'decisions' }),
    h('h2', {}, 'Refresh batches'),
    table(['Batch', 'Status', { label: 'Rows', num: true }, { label: 'Rejected', num: true }, 'Data time', 'Finished', 'Source', 'Script'],
      (job.batches || []).map((b) => h('tr', {},
        h('td', {}, b.batch_id, b.current ? h('span', { class: 'pill good' }, ' served') : null),
        h('td', {}, h('span', { class: `pill ${b.status === 'done' ? 'good' : b.status === 'failed' ? 'bad' : 'warn'}` }, b.status)),
        h('td', { class: 'num' }, b.rows_written), h('td', { class: 'num' }, b.rows_rejected),
        h('td', {}, when(b.ingested_at)), h('td', {}, when(b.finished_at)),
        h('td', {}, b.source), h('td', {}, b.script_version || '–', b.error ? h('div', { class: 'error' }, b.error) : null))), { id: 'batches' }),
    h('h2', {}, 'Runs'),
    table(['Started', { label: 'Took', num: true }, 'Trigger', 'Outcome', 'Batch', 'Message'],
      (job.runs || []).slice().reverse().map((r) => h('tr', {},
        h('td', {}, when(r.started_at)), h('td', { class: 'num' }, `${num(r.took_s, 1)} s`), h('td', {}, triggerText(r.trigger)),
        h('td', {}, h('span', { class: `pill ${r.outcome === 'loaded' || r.outcome === 'unchanged' ? 'good' : r.outcome === 'skipped' ? 'warn' : 'bad'}` }, r.outcome)),
        h('td', {}, r.batch_id || '–'), h('td', {}, r.message || ''))), { id: 'runs' }));
}

// Why a run started, from its trigger ({kind, ...}).
function triggerText(t) {
  switch (t && t.kind) {
    case 'first': return 'first run';
    case 'scheduled': return 'interval passed';
    case 'catch_up': return `catch-up (${t.missed} missed)`;
    case 'forced': return `asked by ${t.by}`;
    case 'retry': return `retry (${t.failed} failed)`;
    default: return t && t.kind ? t.kind : '–';
  }
}

// ---------------------------------------------------------------- scoring

function alarms(list) {
  return list && list.length ? list.map((a) => h('div', { class: 'pill bad' }, a)) : '–';
}

function scoringBatchRow(b) {
  return h('tr', {},
    h('td', {}, b.batch_id, b.served ? h('span', { class: 'pill good' }, ' served') : null),
    h('td', {}, h('span', { class: `pill ${b.status === 'done' ? 'good' : b.status === 'failed' ? 'bad' : 'warn'}` }, b.status)),
    h('td', { class: 'num' }, b.rows), h('td', { class: 'num' }, b.rejected),
    h('td', {}, alarms(b.alarms)),
    h('td', {}, when(b.started_at)), h('td', {}, when(b.finished_at)),
    h('td', {}, b.scored_with), h('td', {}, b.error || ''));
}

const SCORING_BATCH_HEADERS = ['Batch', 'Status', { label: 'Rows', num: true }, { label: 'Rejected', num: true }, 'Cardinality alarms', 'Started', 'Finished', 'Scored with', 'Error'];

async function scoringPage(main) {
  const { jobs } = await api('/v1/admin/scoring/jobs');
  main.replaceChildren(
    h('h1', {}, 'Prediction store'),
    h('p', { class: 'muted' }, 'Batch-scoring jobs: the predictions the gateway answers from first, and their latest run.'),
    table(['Job', 'Model', 'Keyed by', { label: 'Interval', num: true }, { label: 'Max age', num: true }, 'Latest batch', { label: 'Rows', num: true }, 'Alarms'],
      jobs.map((j) => h('tr', {},
        h('td', {}, h('a', { href: `#/scoring/${encodeURIComponent(j.job)}` }, j.job)),
        h('td', {}, j.model), h('td', {}, j.key),
        h('td', { class: 'num' }, duration(j.interval_s)), h('td', { class: 'num' }, duration(j.max_age_s)),
        h('td', {}, j.latest ? [h('span', { class: `pill ${j.latest.status === 'done' ? 'good' : j.latest.status === 'failed' ? 'bad' : 'warn'}` }, j.latest.status), j.latest.served ? ' served' : '', ` ${when(j.latest.finished_at)}`] : 'never ran'),
        h('td', { class: 'num' }, j.latest ? j.latest.rows : '–'),
        h('td', {}, j.latest ? alarms(j.latest.alarms) : '–'))), { id: 'scoring-jobs' }));
}

async function scoringJobPage(main, name) {
  const reload = () => scoringJobPage(main, name);
  const path = `/v1/admin/scoring/jobs/${encodeURIComponent(name)}`;
  const { batches } = await api(`${path}/batches?limit=20`);
  main.replaceChildren(
    h('h1', {}, `Scoring job ${name}`),
    me.may_change
      ? h('section', { class: 'actions', 'aria-label': 'Scoring actions' },
        h('button', { class: 'primary', id: 'score-now', onclick: () => act(`Start a scoring run of ${name} in this gateway`, `${path}/run`, {}, reload) }, 'Score now'))
      : h('p', { class: 'muted', id: 'read-only' }, 'You can look but not change: changes need the admin role.'),
    h('h2', {}, 'Batches, newest first'),
    table(SCORING_BATCH_HEADERS, batches.map(scoringBatchRow), { id: 'scoring-batches' }));
}

// ---------------------------------------------------------------- live

// Prometheus text → [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function quantileFromBuckets(samples, q) {
  const byLe = new Map();
  for (const s of samples) byLe.set(s.labels.le, (byLe.get(s.labels.le) || 0) + s.value);
  const buckets = [...byLe.entries()].map(([le, c]) => [le === '+Inf' ? Infinity : Number(le), c]).sort((a, b) => a[0] - b[0]);
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const want = q * total;
  for (const [le, c] of buckets) if (c >= want) return le;
  return null;
}

let liveTimer = null;
let lastSample = null;

async function livePage(main) {
  const r = await fetch('/metrics', { credentials: 'same-origin' });
  const samples = parseMetrics(await r.text());
  const sum = (name, f) => samples.filter((s) => s.name === name && (!f || f(s.labels))).reduce((a, s) => a + s.value, 0);
  const now = Date.now();
  const requests = sum('mlgw_requests_total');
  const errors = sum('mlgw_requests_total', (l) => l.code && l.code !== 'ok');
  const rate = lastSample ? ((requests - lastSample.requests) / ((now - lastSample.at) / 1000)) : null;
  lastSample = { at: now, requests };
  const p50 = quantileFromBuckets(samples.filter((s) => s.name === 'mlgw_request_seconds_bucket'), 0.5);
  const p99 = quantileFromBuckets(samples.filter((s) => s.name === 'mlgw_request_seconds_bucket'), 0.99);
  const ratio = samples.find((s) => s.name === 'mlgw_feature_cache_hit_ratio');
  const circuits = samples.filter((s) => s.name === 'mlgw_model_circuit_state');
  const lag = samples.filter((s) => s.name === 'mlgw_ingest_lag');
  const queued = sum('mlgw_async_requests_total', (l) => l.result === 'accepted');
  const card = (label, value, id) => h('div', { class: 'card' }, h('div', { class: 'muted' }, label), h('div', { class: 'value', id }, value));
  const ms = (s) => (s === null ? '–' : s === Infinity ? '> largest bucket' : `≤ ${(s * 1000).toFixed(s < 0.001 ? 2 : 1)} ms`);
  main.replaceChildren(
    h('h1', {}, 'Live'),
    h('p', { class: 'muted' }, `From /metrics, every 5 s; latencies are histogram bucket bounds since start. Read ${when(now)}.`),
    h('div', { class: 'cards' },
      card('Requests since start', requests.toLocaleString('en'), 'live-requests'),
      card('Requests per second', rate === null ? '…' : rate.toFixed(1), 'live-rate'),
      card('Errors since start', `${errors.toLocaleString('en')} (${requests ? ((100 * errors) / requests).toFixed(2) : '0.00'}%)`, 'live-errors'),
      card('Latency p50', ms(p50), 'live-p50'),
      card('Latency p99', ms(p99), 'live-p99'),
      card('Row cache hit ratio', ratio ? `${(100 * ratio.value).toFixed(1)}%` : '–', 'live-cache'),
      card('Asynchronous requests accepted', samples.some((s) => s.name === 'mlgw_async_requests_total') ? queued.toLocaleString('en') : 'off', 'live-async')),
    h('h2', {}, 'Model-server circuits'),
    table(['Labels', 'State'], circuits.map((c) => h('tr', {},
      h('td', {}, Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(', ')),
      h('td', {}, h('span', { class: `pill ${c.value === 0 ? 'good' : 'bad'}` }, c.value === 0 ? 'closed' : c.value === 1 ? 'open' : 'half-open')))), { id: 'circuits' }),
    h('h2', {}, 'Kafka ingest lag'),
    lag.length
      ? table(['Topic', { label: 'Partition', num: true }, { label: 'Records behind', num: true }], lag.map((l) => h('tr', {},
        h('td', {}, l.labels.topic), h('td', { class: 'num' }, l.labels.partition),
        h('td', { class: 'num' }, h('span', { class: `pill ${l.value > 1000 ? 'warn' : 'good'}` }, l.value.toLocaleString('en'))))), { id: 'ingest-lag' })
      : h('p', { class: 'muted', id: 'ingest-lag' }, 'No Kafka ingest in this gateway ([ingest] is off).'));
  liveTimer = setTimeout(() => { if (location.hash === '#/live') route(); }, 5000);
}

// ---------------------------------------------------------------- shell

function signedOut(main, message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  main.replaceChildren(h('div', { class: 'narrow' },
    h('h1', {}, 'mlgw console'),
    h('p', {}, message || 'Models and rollouts, refresh jobs and the tuner, live figures. Sign in with your company account.'),
    h('a', { class: 'button primary', href: '/console/login', id: 'sign-in' }, 'Sign in')));
}

async function signOut() {
  await fetch('/console/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': me.csrf } });
  me = null;
  signedOut(document.getElementById('main'), 'Signed out.');
}

async function route(event) {
  clearTimeout(liveTimer);
  // A message belongs to the page it was said on.
  if (event && event.type === 'hashchange') say('');
  const main = document.getElementById('main');
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const page = parts[0] || 'models';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#/${page}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (page === 'models' && parts[1]) await modelPage(main, parts[1]);
    else if (page === 'models') await modelsPage(main);
    else if (page === 'jobs' && parts[1]) await jobPage(main, parts[1]);
    else if (page === 'jobs') await jobsPage(main);
    else if (page === 'scoring' && parts[1]) await scoringJobPage(main, parts[1]);
    else if (page === 'scoring') await scoringPage(main);
    else if (page === 'live') await livePage(main);
    else main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/models' }, 'Models')));
  } catch (e) {
    if (e.status === 401) {
      signedOut(main, 'Your session ended: sign in again.');
      return;
    }
    main.replaceChildren(h('h1', {}, 'Cannot show this page'), h('p', { class: 'error', id: 'page-error' }, `${e.status || ''} ${e.code || ''}: ${e.message}`));
  }
}

async function start() {
  const main = document.getElementById('main');
  try {
    me = await api('/console/session');
  } catch (e) {
    signedOut(main, e.status === 401 ? null : `The session could not be read: ${e.message}`);
    return;
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('who').replaceChildren(
    h('span', { id: 'subject' }, me.subject),
    h('span', { class: `pill ${me.may_change ? 'warn' : ''}`, id: 'role' }, me.may_change ? 'admin' : 'viewer'),
    h('button', { id: 'sign-out', onclick: signOut }, 'Sign out'));
  window.addEventListener('hashchange', route);
  await route();
}

start();
