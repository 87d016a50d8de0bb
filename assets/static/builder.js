// The pipeline builder widget: the body of a gr.HTML `js_on_load` (it receives `element`,
// `trigger`, `props` and `watch`). The server owns the pipeline: the widget draws the view it
// sends (props.value: {draft, check, selected}) and reports each edit with
// trigger('edit', {draft, selected}); the server validates and sends the view back.
const catalog = JSON.parse(props.catalog || '{"palette": [], "memory": []}');
const byName = Object.fromEntries(catalog.palette.map((c) => [c.name, c]));
const memoryKinds = Object.fromEntries(catalog.memory.map((m) => [m.type, m]));
let view = {};
let selected = null;
let syncing = false;
let dragging = false;  // no redraw while a drag is under way: it would drop the dragged item

const esc = (s) => String(s ?? '').replace(/[&<>"']/g,
  (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const $ = (sel) => element.querySelector(sel);

function emptyDraft() {
  return {name: 'my_pipeline', memory: {type: 'text', params: {}}, ingest: [], query: []};
}

function parseValue() {
  try { view = JSON.parse(props.value || '{}') || {}; } catch (e) { view = {}; }
  if (!view.draft) view.draft = emptyDraft();
  if (view.selected !== undefined) selected = view.selected;
}

function newId(component, taken) {
  const base = (component || 'slot').replace(/[^A-Za-z0-9_]/g, '_') || 'slot';
  if (!taken.has(base)) return base;
  let n = 2;
  while (taken.has(base + '_' + n)) n += 1;
  return base + '_' + n;
}

function send(draft, sel, keepForm) {
  if (sel !== undefined) selected = sel;
  view.draft = draft;
  element.dataset.busy = '1';  // until the server's answer is drawn
  trigger('edit', {draft: JSON.stringify(draft), selected: selected});
  draw(keepForm);
}

// Read the lanes back from the DOM after a drag: known slots by id, new ones from the palette.
function syncFromDom() {
  syncing = false;
  const old = view.draft;
  const byId = {};
  for (const lane of ['ingest', 'query']) for (const s of old[lane] || []) byId[s.id] = s;
  const taken = new Set(Object.keys(byId));
  const draft = {...old, ingest: [], query: []};
  let added = null;
  for (const laneEl of element.querySelectorAll('.mfb-lane')) {
    const lane = laneEl.dataset.lane;
    for (const item of laneEl.children) {
      if (item.dataset.id && byId[item.dataset.id]) {
        draft[lane].push(byId[item.dataset.id]);
      } else if (item.dataset.component) {
        const id = newId(item.dataset.component, taken);
        taken.add(id);
        draft[lane].push({id: id, component: item.dataset.component, params: {}, role: null});
        added = id;
      }
    }
  }
  const present = new Set([...draft.ingest, ...draft.query].map((s) => s.id));
  let sel = added || selected;
  if (sel && sel !== 'memory' && !present.has(sel)) sel = null;
  send(draft, sel);
}

function dragStart() { dragging = true; }

function dragEnd() {
  dragging = false;
  scheduleSync();
}

function scheduleSync() {
  if (syncing) return;
  syncing = true;
  setTimeout(syncFromDom, 0);
}

function problemsOf(slotId) {
  return ((view.check || {}).problems || []).filter((p) => p.slot === slotId);
}

function ports(c) {
  const i = (c.inputs || []).join(', ') || '-';
  const o = (c.outputs || []).join(', ') || '-';
  return `${esc(i)} → ${esc(o)}`;
}

function drawPalette() {
  const groups = {};
  for (const c of catalog.palette) (groups[c.stage] = groups[c.stage] || []).push(c);
  $('.mfb-palette').innerHTML = '<h4>Components</h4>' + Object.entries(groups).map(
    ([stage, items]) => `<div class="mfb-group"><h5>${esc(stage)}</h5>
      <div class="mfb-pal-list" data-stage="${esc(stage)}">${items.map((c) =>
        `<div class="mfb-item" data-component="${esc(c.name)}" title="${esc(c.description)}">
          <b>${esc(c.name)}</b><small>${ports(c)}${c.role ? ' · role ' + esc(c.role) : ''}
          ${c.memory ? ' · ' + esc(c.memory) + ' memory' : ''}</small>
          <small class="mfb-desc">${esc(c.description)}</small></div>`).join('')}
      </div></div>`).join('');
}

function slotHtml(lane, i, s) {
  const c = byName[s.component];
  const bad = problemsOf(s.id).length ? ' mfb-bad' : '';
  const sel = s.id === selected ? ' mfb-selected' : '';
  const role = s.role || (c && c.role);
  return `<div class="mfb-slot${bad}${sel}" data-id="${esc(s.id)}"
    data-component="${esc(s.component)}" tabindex="0">
    <span class="mfb-idx">${i}</span> <b>${esc(s.component)}</b>
    <small>${c ? ports(c) : 'unknown component'}${role ? ' · ' + esc(role) : ''}</small></div>`;
}

function drawLanes() {
  const d = view.draft;
  for (const lane of ['ingest', 'query']) {
    const el = $(`.mfb-lane[data-lane="${lane}"]`);
    el.innerHTML = (d[lane] || []).map((s, i) => slotHtml(lane, i, s)).join('');
  }
  const kinds = catalog.memory.map((m) => `<option value="${esc(m.type)}"
    ${m.type === d.memory.type ? 'selected' : ''}>${esc(m.type)}${m.implemented ? '' :
    ' (not available yet)'}</option>`).join('');
  $('.mfb-memtype').innerHTML = kinds;
  const memBad = ((view.check || {}).problems || []).some((p) => p.lane === 'memory');
  $('.mfb-memory').classList.toggle('mfb-bad', memBad);
  $('.mfb-memory').classList.toggle('mfb-selected', selected === 'memory');
}

function drawProblems() {
  const check = view.check || {problems: []};
  const list = check.problems || [];
  const box = $('.mfb-problems');
  if (!view.check) { box.innerHTML = ''; return; }
  box.innerHTML = list.length === 0
    ? '<div class="mfb-ok">✓ valid pipeline</div>'
    : `<div class="mfb-count">${list.length} problem${list.length > 1 ? 's' : ''}</div><ul>` +
      list.map((p, i) => `<li class="mfb-problem" data-i="${i}" data-slot="${esc(p.slot || '')}"
        data-lane="${esc(p.lane || '')}"><code>${esc(p.location)}</code> ${esc(p.message)}</li>`)
        .join('') + '</ul>';
}

function fieldHtml(f, value, problems) {
  const bad = problems.filter((p) => p.param === f.name);
  const has = value !== undefined;
  const v = has ? value : '';
  const ph = f.default === null || f.default === undefined ? (f.nullable ? 'none' : '')
    : (typeof f.default === 'object' ? JSON.stringify(f.default) : String(f.default));
  let input;
  const attrs = `data-param="${esc(f.name)}" data-kind="${esc(f.kind)}" aria-label="${esc(f.title)}"`;
  if (f.kind === 'integer' || f.kind === 'number') {
    const bounds = ['minimum', 'maximum'].filter((k) => k in f)
      .map((k) => `${k === 'minimum' ? 'min' : 'max'}="${f[k]}"`).join(' ');
    input = `<input type="number" step="${f.kind === 'integer' ? 1 : 'any'}" ${bounds} ${attrs}
      value="${esc(v)}" placeholder="${esc(ph)}">`;
  } else if (f.kind === 'enum' || f.kind === 'boolean') {
    const opts = f.kind === 'boolean' ? [true, false] : f.options;
    input = `<select ${attrs}><option value="">default (${esc(ph)})</option>${opts.map((o) =>
      `<option value="${esc(JSON.stringify(o))}" ${has && JSON.stringify(v) ===
        JSON.stringify(o) ? 'selected' : ''}>${esc(o)}</option>`).join('')}</select>`;
  } else if (f.kind === 'json' || f.multiline) {
    const text = has ? (f.kind === 'json' && typeof v !== 'string' ? JSON.stringify(v) : v) : '';
    input = `<textarea rows="${f.multiline ? 6 : 2}" ${attrs}
      placeholder="${esc(ph)}">${esc(text)}</textarea>`;
  } else {
    input = `<input type="text" ${attrs} value="${esc(v)}" placeholder="${esc(ph)}">`;
  }
  const range = ['minimum', 'maximum'].filter((k) => k in f).map((k) => `${k} ${f[k]}`).join(', ');
  return `<label class="mfb-field${bad.length ? ' mfb-bad' : ''}" data-field="${esc(f.name)}">
    <span>${esc(f.title)}${range ? ' <small>(' + esc(range) + ')</small>' : ''}</span>${input}
    <small class="mfb-help">${esc(f.description)}</small>
    ${bad.map((p) => `<small class="mfb-error">${esc(p.message)}</small>`).join('')}</label>`;
}

function readField(el) {
  const raw = el.value;
  if (raw === '') return undefined;
  switch (el.dataset.kind) {
    case 'integer': case 'number': { const n = Number(raw); return Number.isNaN(n) ? raw : n; }
    case 'enum': case 'boolean': return JSON.parse(raw);
    case 'json': try { return JSON.parse(raw); } catch (e) { return raw; }
    default: return raw;
  }
}

function selectedSlot() {
  for (const lane of ['ingest', 'query']) {
    const i = (view.draft[lane] || []).findIndex((s) => s.id === selected);
    if (i >= 0) return [lane, i, view.draft[lane][i]];
  }
  return null;
}

function drawForm() {
  const box = $('.mfb-form');
  const d = view.draft;
  if (selected === 'memory') {
    const kind = memoryKinds[d.memory.type] || {fields: []};
    const problems = ((view.check || {}).problems || []).filter((p) => p.lane === 'memory');
    box.innerHTML = `<h4>Memory: ${esc(d.memory.type)}</h4>` +
      kind.fields.map((f) => fieldHtml(f, (d.memory.params || {})[f.name], problems)).join('');
    return;
  }
  const found = selectedSlot();
  if (!found) {
    box.innerHTML = '<p class="mfb-hint">Click a slot (or the memory) to edit its ' +
      'parameters. Drag components from the palette into the lanes; drag a slot out ' +
      'of its lane to remove it.</p>';
    return;
  }
  const [lane, i, s] = found;
  const c = byName[s.component];
  const problems = problemsOf(s.id);
  let html = `<h4>${esc(lane)}[${i}] ${esc(s.component)}</h4>` +
    (c ? `<p class="mfb-desc">${esc(c.description)}</p>` : '');
  if (c && c.role) {
    const bad = problems.filter((p) => /: role$/.test(p.location));
    html += `<label class="mfb-field${bad.length ? ' mfb-bad' : ''}" data-field="role">
      <span>Role (policy)</span><input type="text" data-role-input="1" aria-label="Role"
      value="${esc(s.role || '')}" placeholder="${esc(c.role)}"></label>`;
  }
  html += (c ? c.fields : []).map((f) => fieldHtml(f, (s.params || {})[f.name], problems))
    .join('');
  const other = problems.filter((p) => !p.param);
  html += other.map((p) => `<small class="mfb-error">${esc(p.message)}</small>`).join('');
  box.innerHTML = html;
}

// Mark the form's fields with the latest problems without redrawing it (keeps the focus
// and what is being typed).
function markForm() {
  const box = $('.mfb-form');
  const problems = selected === 'memory'
    ? ((view.check || {}).problems || []).filter((p) => p.lane === 'memory')
    : problemsOf(selected);
  for (const label of box.querySelectorAll('label[data-field]')) {
    const name = label.dataset.field;
    const bad = problems.filter((p) => (name === 'role' ? /: role$/.test(p.location)
      : p.param === name));
    label.classList.toggle('mfb-bad', bad.length > 0);
    for (const old of label.querySelectorAll('.mfb-error')) old.remove();
    for (const p of bad) {
      const small = document.createElement('small');
      small.className = 'mfb-error';
      small.textContent = p.message;
      label.appendChild(small);
    }
  }
}

function onFormChange(ev) {
  const el = ev.target;
  const d = JSON.parse(JSON.stringify(view.draft));
  if (selected === 'memory') {
    const params = {...(d.memory.params || {})};
    const v = readField(el);
    if (v === undefined) delete params[el.dataset.param]; else params[el.dataset.param] = v;
    d.memory.params = params;
    send(d, undefined, true);
    return;
  }
  const found = selectedSlot();
  if (!found) return;
  const [lane, i] = found;
  const slot = {...d[lane][i], params: {...(d[lane][i].params || {})}};
  if (el.dataset.roleInput) {
    slot.role = el.value.trim() || null;
  } else if (el.dataset.param) {
    const v = readField(el);
    if (v === undefined) delete slot.params[el.dataset.param];
    else slot.params[el.dataset.param] = v;
  }
  d[lane][i] = slot;
  send(d, undefined, true);
}

function makeSortables() {
  if (typeof Sortable === 'undefined') return;
  const group = {name: 'mf-pipeline', pull: true, put: true};
  for (const el of element.querySelectorAll('.mfb-pal-list')) {
    if (Sortable.get(el)) continue;
    Sortable.create(el, {group: {name: 'mf-pipeline', pull: 'clone', put: false},
      sort: false, animation: 120, onStart: dragStart, onEnd: dragEnd});
  }
  for (const el of element.querySelectorAll('.mfb-lane')) {
    if (Sortable.get(el)) continue;
    Sortable.create(el, {group: group, animation: 120, removeOnSpill: true,
      onStart: dragStart, onEnd: dragEnd});
  }
  const trash = $('.mfb-trash');
  if (trash && !Sortable.get(trash)) {
    Sortable.create(trash, {group: {name: 'mf-pipeline', pull: false, put: true},
      onAdd: (evt) => { evt.item.remove(); scheduleSync(); }});
  }
}

function draw(keepForm) {
  drawLanes();
  drawProblems();
  if (keepForm) markForm(); else drawForm();
  makeSortables();
}

element.addEventListener('click', (ev) => {
  const problem = ev.target.closest('.mfb-problem');
  if (problem) {
    selected = problem.dataset.slot || (problem.dataset.lane === 'memory' ? 'memory' : selected);
    draw();
    const target = selected && selected !== 'memory'
      ? element.querySelector(`.mfb-slot[data-id="${CSS.escape(selected)}"]`) : null;
    if (target) target.scrollIntoView({block: 'nearest'});
    return;
  }
  const slot = ev.target.closest('.mfb-lane .mfb-slot');
  if (slot) { selected = slot.dataset.id; draw(); return; }
  if (ev.target.closest('.mfb-memory') && !ev.target.closest('select')) {
    selected = 'memory';
    draw();
  }
});
element.addEventListener('change', (ev) => {
  if (ev.target.classList.contains('mfb-memtype')) {
    const d = JSON.parse(JSON.stringify(view.draft));
    d.memory = {type: ev.target.value, params: {}};
    send(d, 'memory');
    return;
  }
  if (ev.target.closest('.mfb-form')) onFormChange(ev);
});

function redrawAll() {
  parseValue();
  drawPalette();
  draw();
}

watch('value', () => {
  if (dragging) return;  // the drag's end sends the newer draft
  const before = selected;
  parseValue();
  if (!element.querySelector('.mfb-pal-list')) drawPalette();
  // while a field of the form has the focus, only its marks change
  const typing = $('.mfb-form').contains(document.activeElement) && selected === before;
  draw(typing);
  element.dataset.busy = '0';
});

if (typeof Sortable === 'undefined') {
  // the script in <head> may still be loading
  let tries = 0;
  const wait = setInterval(() => {
    tries += 1;
    if (typeof Sortable !== 'undefined' || tries > 100) { clearInterval(wait); redrawAll(); }
  }, 50);
}
redrawAll();
element.dataset.ready = '1';
